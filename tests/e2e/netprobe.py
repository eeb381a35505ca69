"""A tiny responder and client for the network tests, run inside network namespaces.

``serve NAME BIND TCP_PORT UDP_PORT``: answers every HTTP request on TCP and every UDP datagram
with NAME, and prints ``ready`` once both sockets are bound.
``dns BIND NAME=IP…``: a DNS server on BIND:53 (UDP) answering A queries for NAME with IP
and NXDOMAIN for anything else (a stand-in for Kled's DNS server).
``askh IP PORT TIMEOUT SPEC…``: one HTTP/1.1 request per SPEC, all at once, each on its own
connection: SPEC ``-`` sends no ``x-kled-dev`` header, ``!raw`` sends bytes that are not
HTTP, anything else is sent as ``x-kled-dev: SPEC``; prints the answers in SPEC order.
The server also answers HTTP/2 with prior knowledge (for ``curl --http2-prior-knowledge``).
``ask tcp|udp IP PORT COUNT TIMEOUT [SPORT]``: asks COUNT times and prints a JSON list of the
answers (``!error`` for a failure), one fresh connection or socket per request; UDP from
source port SPORT when given (the same flow, as a long-lived client socket would be).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream) + payload


def _h2_answer(conn: socket.socket, data: bytes, body: bytes) -> None:
    """Read frames until the client's first HEADERS, then answer 200 with ``body`` on it."""
    from hpack import Encoder

    buf = data[len(H2_PREFACE) :]
    stream = 0
    while not stream:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            length = int.from_bytes(buf[:3], "big")
            if buf[3] == 1:
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            buf = buf[9 + length :]
        if not stream:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
    head = Encoder().encode([(":status", "200"), ("content-length", str(len(body)))])
    conn.sendall(
        _h2_frame(4, 0, 0, b"")  # our SETTINGS
        + _h2_frame(4, 1, 0, b"")  # ack of theirs
        + _h2_frame(1, 4, stream, head)  # HEADERS, END_HEADERS
        + _h2_frame(0, 1, stream, body)  # DATA, END_STREAM
    )
    while conn.recv(65536):
        pass


def serve(name: str, bind: str, tcp_port: int, udp_port: int) -> None:
    body = name.encode()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((bind, tcp_port))
    tcp.listen(64)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((bind, udp_port))

    def udp_loop() -> None:
        while True:
            _, addr = udp.recvfrom(2048)
            udp.sendto(body, addr)

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = conn.recv(4096)
                while data and len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
                    more = conn.recv(4096)
                    if not more:
                        break
                    data += more
                if data.startswith(H2_PREFACE):
                    _h2_answer(conn, data, body)
                    return
                head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                conn.sendall(head + body)
            except OSError:
                pass

    threading.Thread(target=udp_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def dns(bind: str, records: list[str]) -> None:
    from dnslib import QTYPE, RCODE, RR, A, DNSRecord

    table = dict(r.split("=", 1) for r in records)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((bind, 53))
    print("ready", flush=True)
    while True:
        data, addr = udp.recvfrom(4096)
        query = DNSRecord.parse(data)
        reply = query.reply()
        name = str(query.q.qname).rstrip(".")
        if name in table and query.q.qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, rdata=A(table[name]), ttl=5))
        elif name not in table:
            reply.header.rcode = RCODE.NXDOMAIN
        udp.sendto(reply.pack(), addr)


def ask(proto: str, ip: str, port: int, count: int, timeout: float, sport: int = 0) -> list[str]:
    answers = []
    for _ in range(count):
        try:
            if proto == "tcp":
                with socket.create_connection((ip, port), timeout=timeout) as s:
                    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                answers.append(data.split(b"\r\n\r\n", 1)[-1].decode())
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("0.0.0.0", sport))
                    s.settimeout(timeout)
                    s.sendto(b"?", (ip, port))
                    answers.append(s.recvfrom(2048)[0].decode())
        except OSError as exc:
            answers.append(f"!{type(exc).__name__}")
    return answers


def _askh_one(ip: str, port: int, timeout: float, spec: str) -> str:
    if spec == "!raw":
        request = b"\x16\x03\x01\x00\x05hello"
    else:
        header = "" if spec == "-" else f"x-kled-dev: {spec}\r\n"
        request = f"GET / HTTP/1.1\r\nHost: api\r\n{header}Connection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data.split(b"\r\n\r\n", 1)[-1].decode()
    except OSError as exc:
        return f"!{type(exc).__name__}"


def askh(ip: str, port: int, timeout: float, specs: list[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=min(32, len(specs) or 1)) as pool:
        return list(pool.map(lambda spec: _askh_one(ip, port, timeout, spec), specs))


if __name__ == "__main__":
    if sys.argv[1] == "askh":
        print(json.dumps(askh(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:])))
    elif sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif sys.argv[1] == "dns":
        dns(sys.argv[2], sys.argv[3:])
    else:
        sport = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        out = ask(
            sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sport
        )
        print(json.dumps(out))
