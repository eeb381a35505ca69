"""Dev session leases in the Message Office: what one control plane replica renews,
another sees; a dropped lease is gone for both. A real nats-server with JetStream."""

from __future__ import annotations

import time

from kled.bus.dev_leases import BucketLeases
from kled.bus.embedded import EmbeddedNats
from servers import control_office


async def test_two_replicas_share_the_leases(embedded: EmbeddedNats) -> None:
    async with control_office(embedded) as first, control_office(embedded) as second:
        one, other = BucketLeases(first), BucketLeases(second)
        assert await other.all() == {}
        before = time.time()
        await one.renew("acme.dev.api", "s1")
        await one.renew("acme.dev.web", "s2")
        seen = await other.all()
        assert sorted(seen) == ["acme.dev.api", "acme.dev.web"]
        session, at = seen["acme.dev.api"]
        assert session == "s1" and before <= at <= time.time()
        await other.renew("acme.dev.api", "s1")  # a renewal that reached the other replica
        assert (await one.all())["acme.dev.api"][1] >= at
        await other.drop("acme.dev.web")
        await other.drop("acme.dev.nothing")  # dropping what is not there is no error
        assert sorted(await one.all()) == ["acme.dev.api"]
