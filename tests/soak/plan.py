"""What the soak does to each run: its story, drawn from a seeded RNG, and the phase (and
instance state) the story implies at the end."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field


class Story(enum.StrEnum):
    COMPLETE = "complete"  # a completion marker at a random time -> stopped/terminated/done
    CRASH_BEFORE = "crash-before"  # instance stopped/terminated before attach -> crashed
    CRASH_AFTER = "crash-after"  # instance stopped/terminated, or FAILED written -> crashed
    SPOT = "spot"  # a spot warning, then AWS takes the instance -> interrupted
    ZOMBIE = "zombie"  # completes; then an instance tagged with its run id is left running


class CrashBy(enum.StrEnum):
    STOP = "stop"
    TERMINATE = "terminate"
    FAILED_MARKER = "failed-marker"  # the job writes FAILED; its instance runs on (a zombie)


STORY_WEIGHTS: dict[Story, float] = {
    Story.COMPLETE: 0.40,
    Story.CRASH_BEFORE: 0.08,
    Story.CRASH_AFTER: 0.15,
    Story.SPOT: 0.20,
    Story.ZOMBIE: 0.17,
}
ON_COMPLETE: dict[Story, dict[str, float]] = {
    Story.COMPLETE: {"stop": 0.45, "terminate": 0.45, "none": 0.1},
    Story.ZOMBIE: {"stop": 0.5, "terminate": 0.5},  # `none` would leave no run ended
}
CHECKPOINT_SHARE = 0.15
"""Runs with checkpointing (a real trainer process and the local transport)."""
CLI_SHARE = 0.1
"""Runs attached with the real `supervisorctl attach`; the rest with supervisor.client."""
TAG_SHARE = 0.2
"""Runs attached with `tag_instance` (a CreateTags call under faults)."""
MARKERS = ("COMPLETE", "training_complete.txt", "done")


@dataclass
class RunPlan:
    """One run: what will happen to it (drawn up front) and what the harness did (filled in)."""

    run_id: str
    story: Story
    attach_at: float
    """Seconds after the soak's start."""
    act_after: float
    """Seconds after the attach: the marker, the crash, or the spot warning."""
    on_complete: str = "stop"
    checkpoint: bool = False
    tag_instance: bool = False
    via_cli: bool = False
    crash_by: CrashBy = CrashBy.STOP
    spot_gap: float = 1.0
    """Seconds from the spot warning to AWS taking the instance."""
    marker: str = "COMPLETE"
    notify: bool = True
    """Put the S3 notification of the marker on the queue (else polling must find it)."""

    instance_id: str = ""
    zombie_instance: str | None = None
    attached: bool = False
    attach_tries: int = 0
    acted: bool = False
    steps: list[str] = field(default_factory=list)
    """What the harness did, in order (for a violation's context)."""

    @property
    def spot(self) -> bool:
        return self.story is Story.SPOT

    def expected_phases(self, checkpoint_verified: bool) -> frozenset[str]:
        """The phase the story implies. A terminate on a checkpointed run without a verified
        checkpoint is a stop (the checkpoint invariant), so that run is stopped."""
        if self.story in (Story.CRASH_BEFORE, Story.CRASH_AFTER):
            return frozenset({"crashed"})
        if self.story is Story.SPOT:
            return frozenset({"interrupted"})
        if self.on_complete == "none":
            return frozenset({"done"})
        if self.on_complete == "terminate" and (not self.checkpoint or checkpoint_verified):
            return frozenset({"terminated"})
        return frozenset({"stopped"})


def make_plans(rng: random.Random, runs: int, active_s: float) -> list[RunPlan]:
    """`runs` stories, attached at random moments of the first 85 % of the active window."""
    stories, weights = list(STORY_WEIGHTS), list(STORY_WEIGHTS.values())
    plans: list[RunPlan] = []
    for index in range(runs):
        story = rng.choices(stories, weights)[0]
        plan = RunPlan(
            run_id=f"soak-{index:04d}-{story}",
            story=story,
            attach_at=rng.uniform(0.5, active_s * 0.85),
            act_after=rng.uniform(0.5, 6.0),
            via_cli=rng.random() < CLI_SHARE,
            marker=rng.choice(MARKERS),
            notify=rng.random() < 0.7,
            spot_gap=rng.uniform(0.2, 4.0),
        )
        if story in ON_COMPLETE:
            options = ON_COMPLETE[story]
            plan.on_complete = rng.choices(list(options), list(options.values()))[0]
        if story is not Story.CRASH_BEFORE:
            plan.checkpoint = rng.random() < CHECKPOINT_SHARE
            plan.tag_instance = rng.random() < TAG_SHARE
        if story is Story.CRASH_BEFORE:
            plan.crash_by = rng.choice((CrashBy.STOP, CrashBy.TERMINATE))
        elif story is Story.CRASH_AFTER:
            plan.crash_by = rng.choice(tuple(CrashBy))
        plans.append(plan)
    plans.sort(key=lambda p: p.attach_at)
    return plans
