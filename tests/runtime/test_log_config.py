"""Logging: JSON lines to the file, run ids bound, credentials redacted, botocore at INFO."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import structlog

from supervisor.runtime.log_config import REDACTED, configure_logging


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_events_are_json_lines_with_their_run_id(tmp_path: Path) -> None:
    log_file = tmp_path / "d.log"
    configure_logging(log_file, console=False)
    structlog.get_logger("t").bind(run_id="r1").info("stop_requested", attempt=1)
    (line,) = _lines(log_file)
    assert line["event"] == "stop_requested"
    assert line["run_id"] == "r1"
    assert line["level"] == "info"
    assert "timestamp" in line


def test_credential_like_fields_and_values_are_redacted(tmp_path: Path) -> None:
    log_file = tmp_path / "d.log"
    configure_logging(log_file, console=False)
    structlog.get_logger("t").info(
        "configured",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG",
        note="key AKIAIOSFODNN7EXAMPLE in use",
        session_token="abc",
    )
    (line,) = _lines(log_file)
    assert line["aws_secret_access_key"] == REDACTED
    assert line["session_token"] == REDACTED
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(line)


def test_botocore_debug_output_is_held_back(tmp_path: Path) -> None:
    log_file = tmp_path / "d.log"
    configure_logging(log_file, console=False, level="debug")
    logging.getLogger("botocore.endpoint").debug("signed request with secrets")
    logging.getLogger("botocore.endpoint").info("visible")
    assert [line["event"] for line in _lines(log_file)] == ["visible"]
