"""A joined device's interface is named for its key file (``kled device join``).

wireguard-go keeps its control sockets in ``/var/run/wireguard``, shared by every network
namespace of a machine, so a name made of the team and device alone let a second user
joining a ``laptop`` of a team ``a`` stop the first one's interface.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kled.agent.net import device
from kled.cli import devices


def test_two_homes_get_two_interfaces_and_one_home_keeps_its_name(tmp_path: Path) -> None:
    alice, bob = str(tmp_path / "alice"), str(tmp_path / "bob")
    first = devices.interface_name("a", "laptop", alice)
    assert first == devices.interface_name("a", "laptop", alice)
    assert first != devices.interface_name("a", "laptop", bob)
    assert first != devices.interface_name("b", "laptop", alice)
    assert first != device.device_ifname("a", "laptop")  # the name before 2026-12
    assert first.startswith("kd-") and len(first) <= 15  # IFNAMSIZ


def test_the_name_follows_xdg_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert devices.key_file("a", "laptop") == tmp_path / "data/kled/devices/a/laptop.key"
    assert devices.interface_name("a", "laptop") == devices.interface_name(
        "a", "laptop", str(tmp_path / "data")
    )
