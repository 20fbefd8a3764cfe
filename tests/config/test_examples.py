"""The example files in config/ are what people copy: each must load as it is, and the run
spec example must teach every key a spec takes."""

from __future__ import annotations

import tomllib
from pathlib import Path

from supervisor.core.spec import RunSpec

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_the_run_spec_example_is_valid_and_shows_every_key() -> None:
    fields = tomllib.loads((CONFIG / "run.example.toml").read_text(encoding="utf-8"))
    spec = RunSpec.build(**fields)
    assert spec.run_id == fields["run_id"]
    # Keys with no sensible example value are named in a comment instead.
    text = (CONFIG / "run.example.toml").read_text(encoding="utf-8")
    missing = [name for name in RunSpec.model_fields if name not in fields and name not in text]
    assert missing == [], f"config/run.example.toml does not mention {missing}"
