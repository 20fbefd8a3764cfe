"""A zombie notifies once (issue 15): the real zombie sweep against moto marks it, attempts
and confirms its termination over several sweeps, and the outbox holds one row for it, which
the sender delivers once (its sender faked at our own port)."""

from __future__ import annotations

import pytest

from supervisor.core.outbox import DeliveryState, parse_notify_on
from supervisor.core.run import Phase
from supervisor.runtime.notifier import Notifier, NotifyPolicy
from tests.runtime.test_notifier import FakeSender
from tests.runtime.test_zombies import World, world  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("no_retry_waits")


async def test_a_zombie_is_told_once_however_many_sweeps_see_it(world: World) -> None:  # noqa: F811
    world.store.notify_on_events(parse_notify_on("zombie"))
    [instance] = world.fleet.launch(1)
    await world.run("z1", instance, Phase.STOPPED)  # stopped: no row (not chosen)
    watch = world.watch(wait_s=300)

    await watch.sweep()
    await watch.sweep()
    world.clock.advance(300)
    await watch.sweep()  # terminated now
    await watch.sweep()

    sender = FakeSender()
    sending = Notifier(world.store, sender, world.clock, replica_id="a", leader=lambda: True,
                       policy=NotifyPolicy())  # fmt: skip
    assert await sending.deliver_pending() == 1
    [(_, message)] = sender.sent
    assert message.key.startswith(f"zombie:{instance}:us-east-1:")
    assert message.title == "z1: zombie"
    assert "run z1 ended (stopped)" in message.body and f"instance: {instance}" in message.body
    [row] = await world.store.outbox_rows()
    assert row.state is DeliveryState.SENT
