"""What the peers bucket must hold, and how few keys each mesh change writes."""

from __future__ import annotations

import json

from kled.control.hostnet import DEVICE_KEEPALIVE
from kled.control.peersync import PeerBook, peer_key
from peerkit import device, key, mesh, node


def settled(book: PeerBook) -> PeerBook:
    """As after the publisher wrote everything."""
    for k, v in book.take(len(book.dirty)):
        book.written(k, v)
    assert not book.dirty
    return book


def test_keys_name_recipient_node_team_and_peer_and_devices_have_none() -> None:
    assert peer_key("acme/node/n1", "acme/device/laptop") == "n1.acme.device-laptop"
    assert peer_key("acme/node/n1", "acme/node/n2") == "n1.acme.node-n2"
    assert peer_key("acme/device/laptop", "acme/node/n1") is None


def test_the_whole_book_is_every_nodes_full_map_as_wireguard_peers() -> None:
    netmap = mesh(3, devices=1)
    netmap.join(node(4, endpoint="host.example:16385"))
    book = PeerBook()
    book.load(netmap, {})
    assert len(book.want) == 4 * 4  # each node: 3 other nodes and the device
    assert book.dirty == set(book.want)
    value = json.loads(book.want["n1.acme.device-d1"])
    assert value["public_key"] == key(1001)
    assert value["persistent_keepalive"] == DEVICE_KEEPALIVE
    assert json.loads(book.want["n1.acme.node-n4"])["endpoint"] is None  # a name: it dials us
    assert json.loads(book.want["n4.acme.node-n1"])["endpoint"] == "198.18.0.1:16385"


def test_a_restart_with_the_same_mesh_writes_nothing_and_drops_stale_keys() -> None:
    netmap = mesh(3)
    book = settled(PeerBook())
    book.load(netmap, {})
    settled(book)
    again = PeerBook()
    stale = {"n9.acme.node-n1": b"{}"}
    again.load(netmap, {**book.have, **stale})
    assert again.dirty == {"n9.acme.node-n1"}
    assert again.take(10) == [("n9.acme.node-n1", None)]


def test_a_device_joining_touches_one_key_per_node() -> None:
    netmap = mesh(50)
    book = PeerBook()
    book.load(netmap, {})
    settled(book)
    touched = book.apply(netmap.join(device(1)), netmap)
    assert touched == 50
    assert book.dirty == {f"n{i}.acme.device-d1" for i in range(1, 51)}


def test_a_node_joining_touches_the_others_once_and_its_own_map() -> None:
    netmap = mesh(50, devices=5)
    book = PeerBook()
    book.load(netmap, {})
    settled(book)
    book.apply(netmap.join(node(51)), netmap)
    assert len(book.dirty) == 50 + (50 + 5)  # n51 in each node's map; n51's own map
    assert {k for k in book.dirty if k.startswith("n51.")} == {
        *(f"n51.acme.node-n{i}" for i in range(1, 51)),
        *(f"n51.acme.device-d{i}" for i in range(1, 6)),
    }


def test_an_endpoint_change_touches_the_nodes_that_have_it() -> None:
    netmap = mesh(10, devices=2)
    book = PeerBook()
    book.load(netmap, {})
    settled(book)
    moved = node(3, endpoint="198.18.5.3:16385")
    book.apply(netmap.update(moved), netmap)
    assert book.dirty == {f"n{i}.acme.node-n3" for i in range(1, 11) if i != 3}
    assert json.loads(book.want["n1.acme.node-n3"])["endpoint"] == "198.18.5.3:16385"


def test_a_node_leaving_is_removed_everywhere_and_its_own_map_goes() -> None:
    netmap = mesh(4, devices=1)
    book = PeerBook()
    book.load(netmap, {})
    settled(book)
    book.apply(netmap.leave("acme/node/n2"), netmap)
    assert not [k for k in book.want if k.startswith("n2.") or k.endswith(".node-n2")]
    assert book.take(100) and all(v is None for _, v in book.take(100))
    assert len(book.dirty) == 3 + 4  # n2 in three maps; n2's map of 3 nodes and the device


def test_a_team_deleted_peer_by_peer_leaves_no_key_behind() -> None:
    netmap = mesh(3, devices=2)
    for i in (1, 2):
        netmap.join(node(i, team="other"))
    book = PeerBook()
    book.load(netmap, {})
    settled(book)
    for peer in netmap.peers("acme"):
        book.apply(netmap.leave(peer.id), netmap)
    settled(book)
    assert sorted(book.have) == ["n1.other.node-n2", "n2.other.node-n1"]
