"""Forgetting UDP flows of a service whose targets changed, as kube-proxy does.

nftables NAT is decided on a flow's first packet; conntrack then pins the flow to that
target. For TCP that is right (a connection stays with its replica until it closes), but a
UDP "flow" is any run of datagrams from one source port, kept for 30 s after the last one:
without this, a client that keeps its socket would go on reaching a removed replica, or the
replicas after an intercept started. So after the gateway's rules change, the UDP entries
whose original destination is one of the changed service IPs are deleted, and the next
datagram is NAT'ed by the new rules.

Netlink conntrack sockets belong to the namespace they are opened in, so the work runs in a
short-lived ``python -m kled.agent.net.conntrack IP…`` started inside the gateway namespace,
through the same command seam as every other tool.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable
from typing import Any

from kled.agent.net.command import run

UDP = socket.IPPROTO_UDP


async def forget_udp_flows(netns: str | None, service_ips: Iterable[str]) -> int:
    """Delete the UDP conntrack entries towards ``service_ips``; the number deleted."""
    ips = sorted(set(service_ips))
    if not ips:
        return 0
    out = await run([sys.executable, "-m", "kled.agent.net.conntrack", *ips], netns=netns)
    return int(out.strip() or 0)


def _nested(msg: Any, *path: str) -> Any:
    for name in path:
        if msg is None:
            return None
        msg = msg.get_attr(name)
    return msg


def _forget(ips: list[str]) -> int:
    from pyroute2 import NFCTSocket
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    wanted = set(ips)
    deleted = 0
    with NFCTSocket() as ct:
        for msg in list(ct.dump()):
            orig = msg.get_attr("CTA_TUPLE_ORIG")
            if _nested(orig, "CTA_TUPLE_PROTO", "CTA_PROTO_NUM") != UDP:
                continue
            daddr = _nested(orig, "CTA_TUPLE_IP", "CTA_IP_V4_DST")
            if daddr not in wanted:
                continue
            key = NFCTAttrTuple(
                saddr=_nested(orig, "CTA_TUPLE_IP", "CTA_IP_V4_SRC"),
                daddr=daddr,
                proto=UDP,
                sport=_nested(orig, "CTA_TUPLE_PROTO", "CTA_PROTO_SRC_PORT"),
                dport=_nested(orig, "CTA_TUPLE_PROTO", "CTA_PROTO_DST_PORT"),
            )
            try:
                ct.entry("del", tuple_orig=key)
            except Exception:
                continue
            deleted += 1
    return deleted


if __name__ == "__main__":
    print(_forget(sys.argv[1:]))
