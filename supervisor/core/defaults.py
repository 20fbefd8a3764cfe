"""Defaults that the CLI's help text shares with the run spec, the zombie sweep and the
control protocol. Plain constants in a module that imports nothing, so `supervisorctl --help`
can show them without importing pydantic (the modules that own them re-export them)."""

from __future__ import annotations

DEFAULT_MARKERS: tuple[str, ...] = ("training_complete.txt", "COMPLETE", "done")
DEFAULT_FAILURE_MARKER = "FAILED"
DEFAULT_TRAINING_LOG = "logs/train.log"
"""The training log's key under the run prefix, unless `tail --training --key` says otherwise."""
DEFAULT_TRAINING_LOG_BYTES = 8192
"""How much of the end of the training log `tail --training` shows first."""
RUN_TAG = "supervisor:run-id"
"""The instance tag naming its run (attach --tag-instance; the zombie sweep reads it)."""
CRASH_LOG_LINES = 20
"""How many last lines of a crash log `supervisorctl show` prints."""
