"""A tiny responder and client for the network tests, run inside network namespaces.

``serve NAME BIND TCP_PORT UDP_PORT``: answers every HTTP request on TCP and every UDP datagram
with NAME, and prints ``ready`` once both sockets are bound.
``dns BIND NAME=IP…``: a DNS server on BIND:53 (UDP) answering A queries for NAME with IP
and NXDOMAIN for anything else (a stand-in for Kled's DNS server).
``ask tcp|udp IP PORT COUNT TIMEOUT [SPORT]``: asks COUNT times and prints a JSON list of the
answers (``!error`` for a failure), one fresh connection or socket per request; UDP from
source port SPORT when given (the same flow, as a long-lived client socket would be).
"""

from __future__ import annotations

import json
import socket
import sys
import threading


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
                conn.recv(4096)
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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif sys.argv[1] == "dns":
        dns(sys.argv[2], sys.argv[3:])
    else:
        sport = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        out = ask(
            sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sport
        )
        print(json.dumps(out))
