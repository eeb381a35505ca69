"""Devices follow their peer set: the watch stream, ``kled device sync`` and ``--follow``.

A real control plane (SQLite) serves ``GET .../devices/{name}/wireguard/watch``; nodes join
a team's mesh the way agents make them (a Node whose ``status.mesh.<team>`` gets a public
key and port). The WireGuard side runs on real ``wireguard-go`` interfaces inside network
namespaces made here (``s8c-…``), torn down even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import secrets
import shutil
import signal
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_mesh_api import eventually, key, make_team, make_user

from kled.agent.net import device, wireguard
from kled.api.device_feed import DeviceFeeds
from kled.cli import devices
from kled.cli.client import _sse_events
from kled.control.netmap import Peer as MeshPeer
from kled.control.netmap import PeerDelta
from kled.resources.netstate import Peer
from servers import RunningServer

KLED = Path(__file__).parents[2] / ".venv" / "bin" / "kled"
WAIT = 60.0


@pytest.fixture(scope="module")
def feed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path_factory.mktemp("s8c-feed") / "data", None).start()
    try:
        yield running
    finally:
        running.stop()


def fresh_team(server: RunningServer) -> str:
    team = f"s8c{secrets.token_hex(3)}"
    make_team(server, team)
    return team


def add_node(server: RunningServer, name: str, team: str, public_key: str, port: int) -> None:
    """A node as its agent makes it: registered, then its key and port reported."""
    with server.client() as admin:
        r = admin.post(
            "/api/v1/nodes", json={"metadata": {"name": name}, "spec": {"address": node_ip(name)}}
        )
        assert r.status_code in (201, 409), r.text
    report_port(server, name, team, public_key, port)


def node_ip(name: str) -> str:
    return f"198.18.1.{zlib.crc32(name.encode()) % 250 + 1}"


def report_port(server: RunningServer, name: str, team: str, public_key: str, port: int) -> None:
    def attempt() -> bool | None:
        with server.client() as admin:
            doc = admin.get(f"/api/v1/nodes/{name}").json()
            mesh = (doc.get("status") or {}).get("mesh") or {}
            if team not in mesh:
                return None
            mesh[team].update(publicKey=public_key, listenPort=port)
            body = {"status": doc["status"], "metadata": doc["metadata"]}
            r = admin.put(f"/api/v1/nodes/{name}/status", json=body)
            return True if r.status_code == 200 else None

    eventually(attempt, f"node/{name}'s key in team {team}", timeout=WAIT)


def delete_node(server: RunningServer, name: str) -> None:
    with server.client() as admin:
        assert admin.delete(f"/api/v1/nodes/{name}").status_code == 200

    def gone() -> bool | None:
        with server.client() as admin:
            return True if admin.get(f"/api/v1/nodes/{name}").status_code == 404 else None

    eventually(gone, f"node/{name} deleted", timeout=WAIT)


def add_device(server: RunningServer, team: str, token: str, owner: str, public_key: str) -> None:
    with server.client(token) as c:
        r = c.post(
            f"/api/v1/teams/{team}/devices",
            json={
                "metadata": {"name": "laptop"},
                "spec": {"owner": owner, "publicKey": public_key},
            },
        )
        assert r.status_code == 201, r.text


def config_with(server: RunningServer, team: str, count: int) -> dict[str, Any]:
    """The laptop's config once it lists ``count`` peers."""

    def probe() -> dict[str, Any] | None:
        with server.client() as admin:
            r = admin.get(f"/api/v1/teams/{team}/devices/laptop/wireguard")
            doc: dict[str, Any] = r.json()
            return doc if r.status_code == 200 and len(doc["peers"]) == count else None

    return eventually(probe, f"the laptop's config with {count} peers", timeout=WAIT)


class Watch:
    """A watch stream read in a thread, read the way the CLI reads it; None ends it."""

    def __init__(self, server: RunningServer, token: str, path: str) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30, read=None),
        )
        self._opened = threading.Event()
        self.status = 0
        self.body = ""
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()
        assert self._opened.wait(WAIT), "the watch did not answer"

    def _run(self, path: str) -> None:
        try:
            with self._http.stream("GET", path) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    self.body = response.read().decode()
                self._opened.set()
                for event in _sse_events(response.iter_lines()):
                    self.events.put((event.type, event.object))
        except httpx.HTTPError:
            pass
        finally:
            self._opened.set()
            self.events.put(None)

    def until(
        self, what: str, match: Callable[[str, dict[str, Any]], bool]
    ) -> tuple[str, dict[str, Any]]:
        """The first event that ``match``es, skipping others; fails if the stream ends."""
        while True:
            try:
                event = self.events.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"gave up waiting for {what}")
            if event is None:
                pytest.fail(f"the stream ended before {what}")
            if match(*event):
                return event

    def ended(self) -> bool:
        while True:
            try:
                event = self.events.get(timeout=WAIT)
            except queue.Empty:
                return False
            if event is None:
                return True

    def close(self) -> None:
        self._http.close()


@contextlib.contextmanager
def watching(server: RunningServer, token: str, team: str) -> Iterator[Watch]:
    watch = Watch(server, token, f"/api/v1/teams/{team}/devices/laptop/wireguard/watch")
    try:
        yield watch
    finally:
        watch.close()


def ids(peers: list[dict[str, Any]]) -> list[str]:
    return [p["id"] for p in peers]


# ---- the stream -------------------------------------------------------------------------


def test_the_watch_sends_the_config_then_each_change_of_the_peer_set(
    feed_server: RunningServer,
) -> None:
    server, team = feed_server, fresh_team(feed_server)
    ada = make_user(server, team, "ada", "member")
    n1, n2 = f"{team}-n1", f"{team}-n2"
    add_node(server, n1, team, key(1), 16384)
    add_device(server, team, ada, "ada", key(9))
    expected = config_with(server, team, 1)
    assert ids(expected["peers"]) == [f"{team}/node/{n1}"]

    with watching(server, ada, team) as watch:
        assert watch.status == 200, watch.body
        kind, config = watch.until("the config", lambda k, o: True)
        assert (kind, config) == ("config", expected)

        add_node(server, n2, team, key(2), 16384)
        _, delta = watch.until("n2 added", lambda k, o: k == "delta" and bool(o["added"]))
        [added] = delta["added"]
        assert delta["removed"] == [] and added["id"] == f"{team}/node/{n2}"
        assert added["publicKey"] == key(2)
        assert added["endpoint"] == f"{node_ip(n2)}:16384"
        assert added["persistentKeepalive"] == 5
        # Shaped as in the config: what GET .../wireguard now lists for n2.
        assert added in config_with(server, team, 2)["peers"]

        report_port(server, n2, team, key(2), 17000)
        _, moved = watch.until("n2's new port", lambda k, o: k == "delta" and bool(o["updated"]))
        assert [(p["id"], p["endpoint"]) for p in moved["updated"]] == [
            (f"{team}/node/{n2}", f"{node_ip(n2)}:17000")
        ]

        delete_node(server, n2)
        _, dropped = watch.until("n2 removed", lambda k, o: k == "delta" and bool(o["removed"]))
        assert dropped["removed"] == [f"{team}/node/{n2}"] and dropped["added"] == []

        # The device revoked: its stream ends, and following it again is refused.
        with server.client(ada) as c:
            assert c.delete(f"/api/v1/teams/{team}/devices/laptop").status_code == 200
        assert watch.ended(), "the stream of a deleted device stayed open"
    with watching(server, ada, team) as again:
        assert again.status == 404, again.body


def test_only_the_owner_and_admins_may_follow_a_device(feed_server: RunningServer) -> None:
    server, team, other = feed_server, fresh_team(feed_server), fresh_team(feed_server)
    ada = make_user(server, team, "ada", "member")
    eve = make_user(server, team, "eve", "member")
    boss = make_user(server, team, "boss", "admin")
    bob = make_user(server, other, "bob", "owner")
    add_device(server, team, ada, "ada", key(9))
    config_with(server, team, 0)
    with watching(server, eve, team) as watch:
        assert watch.status == 403 and "only its owner or a team admin" in watch.body
    with watching(server, bob, team) as watch:
        assert watch.status == 404, watch.body
    for token in (boss, server.admin_token):
        with watching(server, token, team) as watch:
            assert watch.status == 200, watch.body
            kind, config = watch.until("the config", lambda k, o: True)
            assert kind == "config" and config["device"] == "laptop"
    # A reader gone is a stream gone: nothing is kept for it.
    mesh = server.plane.mesh
    assert mesh is not None
    eventually(
        lambda: True if mesh.feeds.following(team, "laptop") == 0 else None,
        "the closed streams to be forgotten",
        timeout=WAIT,
    )


def _node(n: int) -> MeshPeer:
    return MeshPeer(
        id=f"acme/node/n{n}",
        kind="node",
        team="acme",
        public_key=key(n),
        mesh_ip=f"100.64.0.{n}",
        endpoint=f"198.18.0.{n}:51820",
        allowed_ips=(f"100.64.0.{n}/32",),
    )


async def test_a_follower_that_falls_behind_is_sent_a_whole_config() -> None:
    feeds = DeviceFeeds(limit=3)
    laptop = feeds.follow("acme", "laptop")
    phone = feeds.follow("acme", "phone")
    for n in range(1, 5):
        feeds.publish({"acme/device/laptop": PeerDelta(added=[_node(n)])})
    feeds.publish({"acme/device/phone": PeerDelta(added=[_node(1)]), "acme/node/n1": PeerDelta()})
    assert await laptop.wait(0)
    assert laptop.take() == (True, [])
    # Caught up by that config, it gets deltas again.
    feeds.publish({"acme/device/laptop": PeerDelta(removed=["acme/node/n1"])})
    assert laptop.take() == (False, [PeerDelta(removed=["acme/node/n1"])])
    assert phone.take() == (False, [PeerDelta(added=[_node(1)])])
    assert not await phone.wait(0)
    # The device itself left the mesh (its nodes dropped it): a config says where it stands.
    feeds.publish({"acme/node/n2": PeerDelta(removed=["acme/device/phone"])})
    assert phone.take() == (True, [])
    assert laptop.take() == (False, [])
    feeds.unfollow(laptop)
    feeds.unfollow(phone)
    assert feeds.following("acme", "laptop") == 0


# ---- the device's interface ---------------------------------------------------------------


def _netns_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    missing = [t for t in ("ip", "wg", "wireguard-go") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)}"
    return None if os.path.exists("/dev/net/tun") else "needs /dev/net/tun"


netns = pytest.mark.skipif(_netns_skip() is not None, reason=str(_netns_skip()))


@contextlib.contextmanager
def namespace(ifnames: list[str]) -> Iterator[str]:
    """A network namespace of this test; it and the wireguard-go of ``ifnames`` go after."""
    ns = f"s8c-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        for ifname in ifnames:
            asyncio.run(wireguard.stop(ifname))


def dump(ifname: str) -> dict[str, wireguard.PeerStatus]:
    text = subprocess.run(
        ["wg", "show", ifname, "dump"], capture_output=True, text=True, check=True
    ).stdout
    return {p.public_key: p for p in wireguard.parse_dump(text).peers}


@netns
def test_set_peers_changes_only_what_differs_on_a_real_interface() -> None:
    ifname = f"s8c{secrets.token_hex(4)}"
    a = Peer(public_key=key(1), endpoint="198.18.0.1:51820", allowed_ips=("100.64.0.1/32",))
    b = Peer(public_key=key(2), allowed_ips=("100.64.0.2/32", "100.64.16.0/24"))
    with namespace([ifname]) as ns:

        async def scenario() -> None:
            await wireguard.start(ifname, ns)
            first = await device.set_peers(ifname, [a, b])
            assert (first.added, first.removed, first.updated) == ((key(1), key(2)), (), ())
            assert not await device.set_peers(ifname, [a, b])
            moved = a.model_copy(update={"endpoint": "198.18.0.7:51820", "persistent_keepalive": 5})
            second = await device.set_peers(ifname, [moved, b])
            assert (second.added, second.removed, second.updated) == ((), (), (key(1),))
            c = Peer(public_key=key(3), allowed_ips=("100.64.0.3/32",))
            third = await device.set_peers(ifname, [c, moved])
            assert (third.added, third.removed, third.updated) == ((key(3),), (key(2),), ())

        asyncio.run(scenario())
        peers = dump(ifname)
        assert set(peers) == {key(1), key(3)}
        assert peers[key(1)].endpoint == "198.18.0.7:51820"
        assert peers[key(1)].persistent_keepalive == 5
        assert peers[key(3)].allowed_ips == ("100.64.0.3/32",)


def test_the_plan_holds_only_the_differences() -> None:
    have = wireguard.parse_dump(
        "priv\tpub\t51820\toff\n"
        f"{key(1)}\t(none)\t198.18.0.1:51820\t100.64.0.1/32\t0\t0\t0\t5\n"
        f"{key(2)}\t(none)\t[::1]:7\t100.64.16.0/24,100.64.0.2/32\t0\t0\t0\toff\n"
    ).peers
    same = [
        Peer(public_key=key(1), endpoint="198.18.0.1:51820", allowed_ips=("100.64.0.1/32",),
             persistent_keepalive=5),
        # No endpoint given: the one the interface learned stays; the order of IPs is moot.
        Peer(public_key=key(2), allowed_ips=("100.64.0.2/32", "100.64.16.0/24")),
    ]  # fmt: skip
    assert wireguard.plan_peers(have, same) == ([], wireguard.PeerChanges())
    wider = [same[0], same[1].model_copy(update={"allowed_ips": ("100.64.0.0/16",)})]
    args, changes = wireguard.plan_peers(have, wider)
    assert args == [
        "peer", key(2), "allowed-ips", "100.64.0.0/16", "persistent-keepalive", "off"
    ]  # fmt: skip
    assert changes == wireguard.PeerChanges(updated=(key(2),))


# ---- the CLI ----------------------------------------------------------------------------


def kled_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
    env.update(HOME=str(home), KLED_CONFIG=str(home / "kled.yaml"), NO_COLOR="1")
    env.update(XDG_DATA_HOME=str(home / "data"), WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    return env


@netns
def test_device_sync_and_follow_keep_a_joined_interface_current(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = RunningServer(data, None).start()
    try:
        _sync_and_follow(server, data, tmp_path / "laptop")
    finally:
        server.stop()


def _sync_and_follow(first: RunningServer, data: Path, home: Path) -> None:
    server, team = first, fresh_team(first)
    alice = make_user(server, team, "alice", "member")
    n1, n2, n3, n4 = (f"{team}-n{i}" for i in (1, 2, 3, 4))
    add_node(server, n1, team, key(1), 16384)  # join waits for a first peer
    env = kled_env(home)
    # The laptop's namespace reaches the server over its Unix socket.
    login = subprocess.run(
        [str(KLED), "login", "--server", server.url, "--token", alice,
         "--socket", str(server.settings.socket_path())],
        capture_output=True, text=True, env=env, timeout=WAIT,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    ifname = devices.interface_name(team, "laptop", str(home / "data"))

    with namespace([ifname]) as ns:

        def kled(*args: str) -> subprocess.CompletedProcess[str]:
            argv = ["ip", "netns", "exec", ns, str(KLED), "--team", team, *args]
            return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

        missing = kled("device", "sync", "laptop")
        assert missing.returncode == 2 and "device/laptop" in missing.stderr, missing.stderr
        assert "not joined on this machine" in missing.stderr

        joined = kled("device", "join", "laptop")
        assert joined.returncode == 0, joined.stderr
        assert set(dump(ifname)) == {key(1)}
        synced = kled("device", "sync", "laptop")
        assert synced.returncode == 0, synced.stderr
        assert synced.stdout.strip() == "device/laptop: 0 peers added, 0 removed"

        add_node(server, n2, team, key(2), 16384)
        config_with(server, team, 2)
        synced = kled("device", "sync", "laptop")
        assert synced.stdout.strip() == f"device/laptop: 1 peer added, 0 removed (+node/{n2})"
        assert dump(ifname)[key(2)].endpoint == f"{node_ip(n2)}:16384"

        # The first node leaves: n2 carries the team's service range for devices now.
        delete_node(server, n1)
        config = config_with(server, team, 1)
        synced = kled("device", "sync", "laptop")
        assert synced.stdout.startswith("device/laptop: 0 peers added, 1 removed, 1 updated")
        assert f"~node/{n2}" in synced.stdout
        peers = dump(ifname)
        assert set(peers) == {key(2)}
        assert set(peers[key(2)].allowed_ips) == set(config["peers"][0]["allowedIPs"])

        follower = Lines(["ip", "netns", "exec", ns, str(KLED), "--team", team,
                          "device", "join", "laptop", "--follow"], env)  # fmt: skip
        try:
            assert f"device/laptop joined team {team}" in follower.next("the join")
            add_node(server, n3, team, key(3), 16384)
            assert follower.change("n3 arriving") == (
                f"device/laptop: 1 peer added, 0 removed (+node/{n3})"
            )
            assert set(dump(ifname)) == {key(2), key(3)}

            # The control plane restarts: the follower reconnects (a whole config) and
            # goes on applying changes.
            server.stop()
            server = RunningServer(data, None).start()
            add_node(server, n4, team, key(4), 16384)
            assert follower.change("n4 arriving after the restart") == (
                f"device/laptop: 1 peer added, 0 removed (+node/{n4})"
            )
            assert set(dump(ifname)) == {key(2), key(3), key(4)}

            follower.proc.send_signal(signal.SIGINT)
            assert follower.proc.wait(WAIT) == 0, follower.err
            assert "reconnect" in follower.err, follower.err
            assert set(dump(ifname)) == {key(2), key(3), key(4)}, "Ctrl-C took the peers away"
        finally:
            follower.stop()
            if server is not first:
                server.stop()


class Lines:
    """A process whose stdout lines are read as they come, its stderr kept."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self._err.extend(self.proc.stderr)

    @property
    def err(self) -> str:
        return "".join(self._err)

    def next(self, what: str) -> str:
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"gave up waiting for {what}; stderr: {self.err}")
        assert line is not None, f"kled exited before {what}: {self.err}"
        return line

    def change(self, what: str) -> str:
        """The next line about the device's peers (resolver advice may come first)."""
        while not (line := self.next(what)).startswith("device/laptop: "):
            pass
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
