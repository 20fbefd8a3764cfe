"""Prometheus metrics: the in-process daemon against real moto, a real SQLite file and a real
trainer, scraped through the real control socket and the TCP listener and read back with
prometheus-client's own text parser; then the zombie sweep's, and the timing rules alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.adapters.control import ControlClient
from supervisor.core.checkpoint import Manifest
from supervisor.core.events import Action
from supervisor.core.machine import Decision, Transition, new_run
from supervisor.core.run import TERMINAL_PHASES, CheckpointStatus, Outcome, Phase, Run
from supervisor.core.zombies import ZombiePolicy
from supervisor.runtime.daemon import Daemon
from supervisor.runtime.metrics import Metrics, RunCounts
from supervisor.runtime.zombies import ZombieWatch
from tests.conftest import BUCKET, Fleet
from tests.core.builders import make_spec
from tests.runtime.conftest import Harness
from tests.runtime.test_zombies import FakeClock, world_for
from tests.runtime.trainers import Trainers
from tests.runtime.waiting import wait_for

P = Phase


@dataclass(frozen=True)
class Scrape:
    """One parsed `/metrics` page: every sample by name and labels."""

    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]
    families: Mapping[str, str]
    """Family name to type."""

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return cls(samples, families)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when there is no such sample."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


async def scrape_socket(daemon: Daemon) -> Scrape:
    async with ControlClient(daemon.settings.socket_path) as client:
        return Scrape.parse(await client.metrics())


def transitions(scrape: Scrape, from_: str, to: str) -> float:
    return scrape.value("supervisor_transitions_total", **{"from": from_, "to": to})


def aws_calls(scrape: Scrape, service: str, operation: str, outcome: str) -> float:
    labels = {"service": service, "operation": operation, "outcome": outcome}
    return scrape.value("supervisor_aws_calls_total", **labels)


# -- the daemon -------------------------------------------------------------------------------


async def test_a_checkpointed_run_completed_and_stopped_moves_every_counter(
    harness: Harness, trainers: Trainers
) -> None:
    trainer = trainers.start("t1")
    (instance,) = harness.fleet.launch()
    daemon = await harness.start(
        faults="StopInstances=RequestLimitExceeded*1", metrics_addr="127.0.0.1:0"
    )
    assert harness.store is not None
    await trainer.started()
    await harness.attach("r1", instance, **trainer.spec(grace_mode="fixed", grace_s=0.05))
    await harness.wait_phase("r1", P.RUNNING)

    during = await scrape_socket(daemon)
    assert during.value("supervisor_runs", phase="running", outcome="none") == 1
    assert during.value("supervisor_monitors") == 1
    assert transitions(during, "none", "pending") == 1
    assert transitions(during, "running", "checkpointing") == 0

    harness.fleet.put("runs/r1/COMPLETE")
    run = await harness.wait_phase("r1", *TERMINAL_PHASES)
    assert (run.phase, run.outcome, run.checkpoint) == (
        P.STOPPED,
        Outcome.COMPLETED,
        CheckpointStatus.VERIFIED,
    ), run.reason

    async def unwatched() -> bool:
        return not daemon.monitors

    await wait_for(unwatched, what="the monitor to finish")
    after = await scrape_socket(daemon)

    # Every committed transition, once.
    chain = [r.transition for r in await harness.store.transitions("r1")]
    assert [t.to_phase for t in chain] == [
        P.PENDING, P.RUNNING, P.CHECKPOINTING, P.GRACE, P.STOPPING, P.STOPPED,
    ]  # fmt: skip
    for t in chain:
        assert transitions(after, str(t.from_phase or "none"), str(t.to_phase)) == 1, t
    assert after.total("supervisor_transitions_total") == len(chain)

    # AWS calls by outcome: the throttled StopInstances, then the accepted one.
    assert aws_calls(after, "ec2", "StopInstances", "transient") == 1
    assert aws_calls(after, "ec2", "StopInstances", "ok") == 1
    assert after.total("supervisor_aws_calls_total", operation="StopInstances") == harness.calls(
        "StopInstances"
    )
    assert aws_calls(after, "s3", "ListObjectsV2", "ok") >= 2
    assert aws_calls(after, "ec2", "DescribeInstanceStatus", "ok") >= 1
    body = harness.fleet.s3.get_object(Bucket=BUCKET, Key="runs/r1/checkpoints/_manifest.json")
    manifest = Manifest.model_validate_json(body["Body"].read())
    assert aws_calls(after, "s3", "HeadObject", "ok") == len(manifest.files)

    # The checkpoint, the stop, and the time the instance idled after completion.
    assert after.value("supervisor_checkpoint_bytes_verified_total") == sum(
        f.size for f in manifest.files
    )
    assert after.value("supervisor_checkpoint_checks_total", kind="final", result="verified") == 1
    stops = {"source": "run", "action": "stop", "outcome": "accepted"}
    assert after.value("supervisor_terminations_total", **stops) == 1
    assert after.total("supervisor_terminations_total") == 1
    completed, stopping, stopped = chain[2], chain[4], chain[5]
    idle_s = (stopped.at - completed.at).total_seconds()
    assert after.value("supervisor_idle_instance_seconds_total") == pytest.approx(idle_s)
    assert after.value("supervisor_completion_to_stop_seconds_count") == 1
    latency_s = after.value("supervisor_completion_to_stop_seconds_sum")
    assert (stopping.at - completed.at).total_seconds() <= latency_s <= idle_s

    # Runs by phase and outcome, as the store has them; an emptied series drops to 0.
    assert after.families["supervisor_runs"] == "gauge"
    stored = Counter(
        (str(r.run.phase), str(r.run.outcome or "none")) for r in await harness.store.runs()
    )
    assert stored == {("stopped", "completed"): 1}
    assert after.value("supervisor_runs", phase="stopped", outcome="completed") == 1
    assert after.has("supervisor_runs", phase="running", outcome="none")
    assert after.value("supervisor_runs", phase="running", outcome="none") == 0
    assert after.value("supervisor_monitors") == 0

    # The TCP listener serves the same metrics, and `status` says where it is.
    assert daemon.metrics_server is not None and daemon.metrics_server.url is not None
    url = daemon.metrics_server.url
    assert url.startswith("http://127.0.0.1:")
    assert (await daemon.views.status()).metrics_url == url
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        over_tcp = Scrape.parse(await reply.text())
    assert over_tcp.families == after.families
    for t in chain:
        assert transitions(over_tcp, str(t.from_phase or "none"), str(t.to_phase)) == 1


async def test_without_a_metrics_address_metrics_are_on_the_socket_only(
    harness: Harness,
) -> None:
    daemon = await harness.start()

    scrape = await scrape_socket(daemon)

    assert daemon.metrics_server is None
    assert (await daemon.views.status()).metrics_url is None
    assert scrape.families["supervisor_transitions"] == "counter"
    assert scrape.families["supervisor_completion_to_stop_seconds"] == "histogram"
    assert scrape.value("supervisor_monitors") == 0


# -- the zombie sweep -------------------------------------------------------------------------


async def test_a_zombie_terminated_by_the_sweep_is_counted(fleet: Fleet, tmp_path: Path) -> None:
    async with world_for(fleet, tmp_path / "s.db") as world:
        [instance] = fleet.launch(1)
        await world.run("crashed", instance, Phase.CRASHED)
        metrics = Metrics(
            world.clock,
            runs=world.store.runs_by_phase_and_outcome,
            monitors=lambda: 0,
            aws_calls=lambda: world.aws.counter.outcomes,
        )
        watch = ZombieWatch(
            world.store,
            world.aws,
            world.clock,
            policy=ZombiePolicy(auto_terminate=True, wait_s=0, cooldown_s=300),
            interval_s=3600,
            retry_base_s=0,
            metrics=metrics,
        )

        await watch.sweep()
        [entry] = await world.log()
        scrape = Scrape.parse((await metrics.metrics("")).body.decode())

    labels = {"source": "zombie", "action": "terminate", "outcome": str(entry.outcome)}
    assert scrape.value("supervisor_terminations_total", **labels) == 1
    assert scrape.total("supervisor_terminations_total") == 1
    assert aws_calls(scrape, "ec2", "TerminateInstances", "ok") == 1
    assert scrape.value("supervisor_runs", phase="crashed", outcome="crashed") == 1


# -- the timing rules -------------------------------------------------------------------------


class Timeline:
    """A run moved through phases by hand, each transition reported to `metrics`."""

    def __init__(self, metrics: Metrics, clock: FakeClock, **spec: object) -> None:
        self.metrics = metrics
        self.clock = clock
        first = new_run(make_spec(**spec), now=clock.now())
        metrics.transitioned(None, first)
        self.run: Run = first.run

    def to(self, phase: Phase, *, after_s: float, outcome: Outcome | None = None) -> datetime:
        self.clock.advance(after_s)
        at = self.clock.now()
        moved = self.run.evolve(
            phase=phase, outcome=outcome or self.run.outcome, version=self.run.version + 1
        )
        decision = Decision(run=moved, transition=Transition(self.run.phase, phase, at, "test"))
        self.metrics.transitioned(self.run, decision)
        self.run = moved
        return at


async def no_runs() -> RunCounts:
    return {}


async def render(metrics: Metrics) -> Scrape:
    return Scrape.parse((await metrics.metrics("")).body.decode())


async def test_latency_runs_to_the_accepted_stop_and_idle_time_to_the_stopped_instance() -> None:
    clock = FakeClock()
    metrics = Metrics(clock, runs=no_runs, monitors=lambda: 1)
    run = Timeline(metrics, clock)
    run.to(P.RUNNING, after_s=60)
    run.to(P.GRACE, after_s=3600, outcome=Outcome.COMPLETED)
    run.to(P.STOPPING, after_s=300)
    clock.advance(2)
    metrics.instance_acted("run", Action.STOP, "accepted", run_id=run.run.spec.run_id)
    metrics.instance_acted("run", Action.STOP, "accepted", run_id=run.run.spec.run_id)  # again
    run.to(P.STOPPED, after_s=40)

    scrape = await render(metrics)

    assert scrape.value("supervisor_completion_to_stop_seconds_count") == 1
    assert scrape.value("supervisor_completion_to_stop_seconds_sum") == 302
    assert scrape.value("supervisor_completion_to_stop_seconds_bucket", le="300.0") == 0
    assert scrape.value("supervisor_completion_to_stop_seconds_bucket", le="600.0") == 1
    assert scrape.value("supervisor_idle_instance_seconds_total") == 342
    assert scrape.value("supervisor_terminations_total", source="run", action="stop",
                        outcome="accepted") == 2  # fmt: skip
    assert repr(metrics) == "<Metrics completed_not_stopped=0>"


async def test_an_instance_left_running_on_purpose_or_crashed_adds_no_idle_time() -> None:
    clock = FakeClock()
    metrics = Metrics(clock, runs=no_runs, monitors=lambda: 0)
    left = Timeline(metrics, clock, run_id="left", on_complete="none")
    left.to(P.RUNNING, after_s=1)
    left.to(P.GRACE, after_s=10, outcome=Outcome.COMPLETED)
    left.to(P.DONE, after_s=300)
    crashed = Timeline(metrics, clock, run_id="crashed")
    crashed.to(P.RUNNING, after_s=1)
    crashed.to(P.CRASHED, after_s=10, outcome=Outcome.CRASHED)
    metrics.instance_acted("run", Action.START, "accepted", run_id="crashed")

    scrape = await render(metrics)

    assert scrape.value("supervisor_idle_instance_seconds_total") == 0
    assert scrape.value("supervisor_completion_to_stop_seconds_count") == 0
    assert scrape.total("supervisor_terminations_total") == 0  # a start is not a termination
    assert scrape.value("supervisor_transitions_total", **{"from": "grace", "to": "done"}) == 1
    assert repr(metrics) == "<Metrics completed_not_stopped=0>"


def test_each_metrics_has_its_own_registry() -> None:
    clock = FakeClock()
    first = Metrics(clock, runs=no_runs, monitors=lambda: 0)
    second = Metrics(clock, runs=no_runs, monitors=lambda: 0)
    Timeline(first, clock)

    assert first.registry is not second.registry
    labels = {"from": "none", "to": "pending"}
    assert first.registry.get_sample_value("supervisor_transitions_total", labels) == 1
    assert second.registry.get_sample_value("supervisor_transitions_total", labels) is None
