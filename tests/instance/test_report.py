"""The job-side reporter (`supervisor.report`) writing to the moto server; what it writes is
read back with boto3 and judged by `supervisor.core.reports`, the supervisor's own parser."""

from __future__ import annotations

import ast
import base64
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from supervisor import report
from supervisor.core import reports
from supervisor.core.reports import FinalMetrics, History, StatusReport, parse_report
from supervisor.core.spec import DEFAULT_FAILURE_MARKER, DEFAULT_MARKERS, RunSpec
from supervisor.report import Reporter, ReportError
from tests.conftest import BUCKET, Fleet
from tests.instance.conftest import bucket_keys

REPORTER = Path(report.__file__)
RUN = "runs/r1/"
PREFIX = f"s3://{BUCKET}/{RUN}"


class Recorded:
    """A reporter whose S3 client records the key of every PutObject, in order (a botocore
    event hook on the real client: the calls still go to the moto server)."""

    def __init__(self, fleet: Fleet, prefix: str = PREFIX) -> None:
        self.fleet = fleet
        self.keys: list[str] = []
        client: Any = boto3.client("s3", endpoint_url=fleet.url)
        client.meta.events.register("before-parameter-build.s3.PutObject", self._record)
        self.reporter = Reporter(prefix, client=client)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.keys.append(params["Key"].removeprefix(RUN))

    def body(self, key: str) -> bytes:
        reply = self.fleet.s3.get_object(Bucket=BUCKET, Key=RUN + key)
        return bytes(reply["Body"].read())

    def json(self, key: str) -> dict[str, Any]:
        document = json.loads(self.body(key))
        assert isinstance(document, dict)
        return document

    def stored(self) -> list[str]:
        return [key.removeprefix(RUN) for key in bucket_keys(self.fleet.s3, BUCKET)]


@pytest.fixture
def recorded(fleet: Fleet) -> Recorded:
    return Recorded(fleet)


def assert_recent_utc(text: str) -> None:
    stamp = datetime.fromisoformat(text)
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(stamp.tzinfo) - stamp) < timedelta(minutes=1)


class TestStatus:
    def test_started_writes_status_json_with_state_started_and_the_wandb_ids(
        self, recorded: Recorded
    ) -> None:
        recorded.reporter.started(wandb_run_id="abc123", wandb_url="https://wandb.ai/t/p/abc123")

        assert recorded.keys == ["status.json"]
        status = recorded.json("status.json")
        assert_recent_utc(status.pop("time"))
        assert status == {
            "format": 1,
            "state": "started",
            "step": None,
            "total_steps": None,
            "metrics": {},
            "wandb_run_id": "abc123",
            "wandb_url": "https://wandb.ai/t/p/abc123",
        }
        parsed = parse_report("status.json", json.dumps(status), heartbeat_file="status.json")
        assert isinstance(parsed, StatusReport)
        assert (parsed.state, parsed.wandb_run_id) == ("started", "abc123")

    def test_a_heartbeat_writes_the_step_and_metrics_and_repeats_the_wandb_ids(
        self, recorded: Recorded
    ) -> None:
        recorded.reporter.started(wandb_run_id="abc123")
        assert recorded.reporter.heartbeat(7, loss=0.25, lr=3)

        status = recorded.json("status.json")
        assert (status["state"], status["step"], status["metrics"]) == (
            "running",
            7,
            {"loss": 0.25, "lr": 3},
        )
        assert (status["wandb_run_id"], status["wandb_url"]) == ("abc123", None)
        assert recorded.keys == ["status.json", "status.json"]

    def test_total_steps_given_to_started_or_a_heartbeat_is_written_and_repeated(
        self, recorded: Recorded
    ) -> None:
        recorded.reporter.started(total_steps=1000)
        assert recorded.json("status.json")["total_steps"] == 1000
        recorded.reporter.heartbeat(10, loss=0.5)
        assert recorded.json("status.json")["total_steps"] == 1000
        recorded.reporter.heartbeat(20, total_steps=2000)
        status = recorded.json("status.json")
        assert (status["step"], status["total_steps"], status["metrics"]) == (
            20,
            2000,
            {},
        )
        parsed = parse_report(
            "status.json", recorded.body("status.json").decode(), heartbeat_file="status.json"
        )
        assert isinstance(parsed, StatusReport)
        assert (parsed.step, parsed.total_steps) == (20, 2000)

    def test_every_write_carries_a_sha256_that_s3_checked(self, recorded: Recorded) -> None:
        recorded.reporter.heartbeat(1, loss=1.0)

        head = recorded.fleet.s3.head_object(
            Bucket=BUCKET, Key=RUN + "status.json", ChecksumMode="ENABLED"
        )
        digest = hashlib.sha256(recorded.body("status.json")).digest()
        assert head["ChecksumSHA256"] == base64.b64encode(digest).decode()
        assert head["ContentType"] == "application/json"

    def test_a_heartbeat_that_cannot_be_written_is_logged_and_training_goes_on(
        self, fleet: Fleet, caplog: pytest.LogCaptureFixture
    ) -> None:
        recorded = Recorded(fleet, "s3://no-such-bucket/runs/r1/")

        with caplog.at_level(logging.WARNING, logger="supervisor.report"):
            written = recorded.reporter.heartbeat(3, loss=0.5)

        assert written is False
        assert "heartbeat not written" in caplog.text
        assert "s3://no-such-bucket/runs/r1/status.json" in caplog.text
        assert "NoSuchBucket" in caplog.text
        assert recorded.keys == ["status.json"], "a missing bucket is not retried"

    def test_a_report_that_cannot_be_written_raises_naming_the_object_and_the_error(
        self, fleet: Fleet
    ) -> None:
        reporter = Recorded(fleet, "s3://no-such-bucket/runs/r1/").reporter

        with pytest.raises(ReportError, match=r"s3://no-such-bucket/runs/r1/status\.json.*"
                           r"NoSuchBucket"):  # fmt: skip
            reporter.started()


class TestHistory:
    def test_log_buffers_records_and_writes_nothing(self, recorded: Recorded) -> None:
        for step in range(3):
            recorded.reporter.log(step, loss=1.0 / (step + 1))

        assert recorded.keys == []
        assert recorded.reporter.history.records == [
            {"step": 0, "loss": 1.0},
            {"step": 1, "loss": 0.5},
            {"step": 2, "loss": 1 / 3},
        ]

    def test_history_over_its_limit_is_thinned_evenly_keeping_the_first_and_newest(
        self,
    ) -> None:
        history = report.History(limit=1_000)
        for step in range(1_001):
            history.add({"step": step, "loss": 0.5})

        assert history.size == len(json.dumps(history.document(), separators=(",", ":")))
        assert 500 < history.size <= 1_000
        steps = [r["step"] for r in history.records]
        assert steps[0] == 0
        assert steps[-1] == 1_000
        gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
        assert gaps == {history.stride}, "evenly spaced, but for the newest"
        assert steps[-1] - steps[-2] <= history.stride

    def test_a_long_run_keeps_history_json_within_340_kb(self, recorded: Recorded) -> None:
        steps = 20_000
        for step in range(steps):
            recorded.reporter.log(step, loss=1.0 / (step + 1), lr=0.001)
        recorded.reporter.completed({"val_loss": 0.1})

        body = recorded.body("history.json")
        # Thinning halves the records: what is left fills between half the limit and all of it.
        assert 170_000 < len(body) <= report.HISTORY_LIMIT_BYTES == 340_000
        records = recorded.json("history.json")["records"]
        assert records[0]["step"] == 0
        assert records[-1] == {"step": steps - 1, "loss": 1.0 / steps, "lr": 0.001}
        parsed = parse_report("history.json", body.decode(), heartbeat_file="status.json")
        assert isinstance(parsed, History)
        assert parsed.last_step == steps - 1


class TestCompleted:
    def test_writes_final_metrics_then_history_then_the_marker_last(
        self, recorded: Recorded
    ) -> None:
        recorded.reporter.started()
        for step in (1, 2):
            recorded.reporter.heartbeat(step, loss=1.0 / step)
            recorded.reporter.log(step, loss=1.0 / step)
        recorded.reporter.completed({"val_loss": 0.21, "accuracy": 0.93})

        assert recorded.keys[-3:] == ["final_metrics.json", "history.json", "COMPLETE"]
        final = recorded.json("final_metrics.json")
        assert_recent_utc(final.pop("time"))
        assert final == {
            "format": 1,
            "metrics": {"val_loss": 0.21, "accuracy": 0.93},
            "total_steps": 2,
            "runtime_s": None,
            "wandb": None,
        }
        assert recorded.json("history.json") == {
            "format": 1,
            "records": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}],
        }
        assert recorded.body("COMPLETE").startswith(b"completed at ")

    def test_three_hundred_metrics_arrive_whole(self, recorded: Recorded) -> None:
        metrics = {f"eval/task_{i:03d}/loss": i / 7 for i in range(300)}
        recorded.reporter.completed(metrics, total_steps=5_000)

        body = recorded.body("final_metrics.json")
        parsed = parse_report("final_metrics.json", body.decode(), heartbeat_file="status.json")
        assert isinstance(parsed, FinalMetrics)
        assert parsed.metrics == metrics
        assert parsed.total_steps == 5_000

    def test_a_given_history_replaces_the_buffer(self, recorded: Recorded) -> None:
        recorded.reporter.log(1, loss=9.0)
        recorded.reporter.completed({}, history=[{"loss": 0.5, "step": 10}, {"step": 20}])

        records = recorded.json("history.json")["records"]
        assert records == [{"step": 10, "loss": 0.5}, {"step": 20}]

    def test_a_history_of_columns_as_pandas_gives_them_is_written_as_records(
        self, recorded: Recorded
    ) -> None:
        # DataFrame.to_dict("list") of a W&B history: `_step`, W&B's own columns, and NaN
        # (pandas' empty cell) where a metric was not logged at that step.
        columns = {
            "_step": [0.0, 10.0, 20.0],
            "loss": [2.0, 1.0, 0.5],
            "val_loss": [math.nan, math.nan, 0.7],
            "_runtime": [0.1, 5.0, 9.9],
        }
        recorded.reporter.completed({}, history=columns)

        records = recorded.json("history.json")["records"]
        assert records == [
            {"step": 0, "loss": 2.0},
            {"step": 10, "loss": 1.0},
            {"step": 20, "loss": 0.5, "val_loss": 0.7},
        ]
        assert recorded.json("final_metrics.json")["total_steps"] == 20

    def test_history_records_keyed_by_wandbs_step_are_accepted(self, recorded: Recorded) -> None:
        rows: list[dict[str, object]] = [
            {"_step": 1, "loss": 1.0, "_timestamp": 1.7e9},
            {"_step": 2, "loss": None},
        ]
        recorded.reporter.completed({}, history=rows)

        assert recorded.json("history.json")["records"] == [{"step": 1, "loss": 1.0}, {"step": 2}]

    def test_the_ids_given_to_started_are_kept_without_an_active_wandb_run(
        self, recorded: Recorded
    ) -> None:
        recorded.reporter.started(wandb_run_id="abc123", wandb_url="https://wandb.ai/x")
        recorded.reporter.completed({"val_loss": 0.3})

        assert recorded.json("final_metrics.json")["wandb"] == {
            "run_id": "abc123",
            "url": "https://wandb.ai/x",
            "project": None,
            "summary": {},
        }

    # wandb is not installed here: a stand-in module in sys.modules plays its boundary
    # (`wandb.run` with id, url, project and a dict-like summary), nothing of ours is faked.
    def test_an_active_wandb_run_gives_its_ids_project_and_summary_numbers(
        self, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run = SimpleNamespace(
            id="w1",
            url="https://wandb.ai/team/proj/runs/w1",
            project="proj",
            summary={
                "val_loss": 0.2,
                "_step": 99,
                "best": True,
                "note": "text",
                "diverged": math.nan,
                "media": {"_type": "image-file"},
            },
        )
        monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=run))
        recorded.reporter.started()
        recorded.reporter.completed({"val_loss": 0.2})

        assert recorded.json("status.json")["wandb_run_id"] == "w1"
        assert recorded.json("status.json")["wandb_url"] == "https://wandb.ai/team/proj/runs/w1"
        final = recorded.json("final_metrics.json")
        assert final["wandb"] == {
            "run_id": "w1",
            "url": "https://wandb.ai/team/proj/runs/w1",
            "project": "proj",
            "summary": {"val_loss": 0.2},  # W&B's own `_step` is the total steps, not a metric
        }
        assert (final["metrics"], final["total_steps"]) == ({"val_loss": 0.2}, 99)

    def test_the_wandb_summary_a_step_behind_is_brought_up_to_date_with_the_last_record(
        self, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # After wandb.log({...}, step=N) W&B's summary still holds step N-1: W&B commits a
        # row only when the next step is logged, or at finish.
        stale = {"loss": 0.6, "lr": 0.01, "_step": 98, "_runtime": 12.5, "_timestamp": 1.7e9}
        run = SimpleNamespace(id="w1", url=None, project="proj", summary=stale)
        monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=run))
        for step in (98, 99):
            recorded.reporter.log(step, loss=0.6 if step == 98 else 0.5)
        recorded.reporter.completed({"val_loss": 0.2})

        final = recorded.json("final_metrics.json")
        assert final["wandb"]["summary"] == {"loss": 0.5, "lr": 0.01, "val_loss": 0.2}
        assert final["metrics"] == {"val_loss": 0.2}
        assert (final["total_steps"], final["runtime_s"]) == (99, 12.5)
        parsed = parse_report(
            "final_metrics.json", recorded.body("final_metrics.json").decode(),
            heartbeat_file="status.json",
        )  # fmt: skip
        assert isinstance(parsed, FinalMetrics)
        assert (parsed.metrics, parsed.total_steps, parsed.runtime_s) == (
            {"val_loss": 0.2},
            99,
            12.5,
        )

    def test_wandbs_own_keys_in_the_final_metrics_given_are_not_metrics(
        self, recorded: Recorded
    ) -> None:
        summary = {"val_loss": 0.2, "_step": 4999, "_runtime": 60.0, "_timestamp": 1.7e9}
        recorded.reporter.completed(summary)

        final = recorded.json("final_metrics.json")
        assert (final["metrics"], final["total_steps"]) == ({"val_loss": 0.2}, 4999)

    def test_a_wandb_summary_that_cannot_be_read_still_completes_the_run(
        self, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        class Unreadable:
            def keys(self) -> list[str]:
                raise RuntimeError("wandb backend gone")

        run = SimpleNamespace(id="w1", url=None, project="proj", summary=Unreadable())
        monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=run))
        recorded.reporter.completed({"val_loss": 0.2})

        assert recorded.keys == ["final_metrics.json", "history.json", "COMPLETE"]
        wandb = recorded.json("final_metrics.json")["wandb"]
        assert (wandb["run_id"], wandb["summary"]) == ("w1", {})


BAD_VALUES = [
    pytest.param(math.nan, "only finite numbers", id="nan"),
    pytest.param(math.inf, "only finite numbers", id="inf"),
    pytest.param(True, "not a number", id="bool"),
    pytest.param("0.5", "not a number", id="str"),
    pytest.param(None, "not a number", id="none"),
]


class TestValidation:
    @pytest.mark.parametrize(("value", "why"), BAD_VALUES)
    def test_a_bad_final_metric_is_rejected_naming_it_before_anything_is_written(
        self, recorded: Recorded, value: object, why: str
    ) -> None:
        recorded.reporter.log(1, loss=0.5)
        with pytest.raises(ValueError, match=f"metric 'val_loss' is .*{why}"):
            recorded.reporter.completed({"accuracy": 0.9, "val_loss": value})  # type: ignore[dict-item]

        assert recorded.keys == []
        assert recorded.stored() == []

    @pytest.mark.parametrize("call", ["heartbeat", "log"])
    def test_a_bad_step_metric_is_rejected_naming_it(self, recorded: Recorded, call: str) -> None:
        with pytest.raises(ValueError, match="metric 'loss' is nan"):
            getattr(recorded.reporter, call)(1, loss=math.nan)

        assert recorded.keys == []
        assert recorded.reporter.history.records == []

    def test_a_bad_history_record_is_rejected_before_anything_is_written(
        self, recorded: Recorded
    ) -> None:
        with pytest.raises(ValueError, match="metric 'loss' is inf"):
            recorded.reporter.completed({}, history=[{"step": 1, "loss": math.inf}])
        with pytest.raises(ValueError, match="is not a mapping with a 'step'"):
            recorded.reporter.completed({}, history=[{"loss": 1.0}])
        with pytest.raises(ValueError, match=r"columns differ in length \('step' 2, 'loss' 1\)"):
            recorded.reporter.completed({}, history={"step": [1, 2], "loss": [1.0]})
        with pytest.raises(ValueError, match="give a list of records or a mapping of columns"):
            recorded.reporter.completed({}, history="history.json")  # type: ignore[arg-type]

        assert recorded.keys == []

    @pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
    def test_a_step_must_be_a_whole_number(self, recorded: Recorded, step: object) -> None:
        with pytest.raises(ValueError, match=f"step {step!r} is not valid"):
            recorded.reporter.heartbeat(step)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("prefix", "problem"),
        [
            ("runs-bucket/runs/r1/", "is not valid"),
            ("s3://Bad_Bucket/runs/", "invalid bucket 'Bad_Bucket'"),
            ("s3://runs-bucket//runs/", "invalid key"),
        ],
    )
    def test_a_bad_run_prefix_is_rejected_naming_it(self, prefix: str, problem: str) -> None:
        with pytest.raises(ValueError, match=f"run prefix '{prefix}' .*{problem}.*s3://BUCKET"):
            Reporter(prefix)

    def test_without_a_run_prefix_the_error_names_the_environment_variable(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("SUPERVISOR_RUN_PREFIX", raising=False)
        with pytest.raises(ValueError, match="set SUPERVISOR_RUN_PREFIX=s3://BUCKET/PREFIX/"):
            Reporter()


class TestFailed:
    def test_writes_the_error_and_the_log_tail_then_failed_with_the_error_line(
        self, recorded: Recorded, tmp_path: Path
    ) -> None:
        log_file = tmp_path / "train.log"
        lines = [f"step {i} loss={1 / (i + 1):.6f}" for i in range(5_000)]  # ~130 KB
        log_file.write_text("\n".join(lines) + "\n")

        recorded.reporter.failed("CUDA error: out of memory\n  at step 4999", log_file=log_file)

        assert recorded.keys == ["crash/error.log", "FAILED"]
        text = recorded.body("crash/error.log").decode()
        head, _, tail = text.partition(f" bytes of {log_file} ---\n")
        assert head.startswith("CUDA error: out of memory\n  at step 4999\n\n--- the last ")
        assert 60_000 < len(tail) <= 64 * 1024
        assert tail.endswith(lines[-1] + "\n")
        assert tail.splitlines()[0] in lines, "the tail starts at a whole line"
        assert recorded.body("FAILED") == b"CUDA error: out of memory at step 4999\n"

    def test_an_exception_gives_its_traceback_and_its_type_in_the_marker(
        self, recorded: Recorded
    ) -> None:
        try:
            raise RuntimeError("loss diverged")
        except RuntimeError as exc:
            recorded.reporter.failed(exc)

        text = recorded.body("crash/error.log").decode()
        assert text.startswith("Traceback (most recent call last):")
        assert "RuntimeError: loss diverged" in text
        assert recorded.body("FAILED") == b"RuntimeError: loss diverged\n"

    def test_an_unreadable_log_file_is_noted_and_the_failure_still_reported(
        self, recorded: Recorded, tmp_path: Path
    ) -> None:
        recorded.reporter.failed("exit code 1", log_file=tmp_path / "missing.log")

        text = recorded.body("crash/error.log").decode()
        assert text.startswith("exit code 1\n")
        assert f"the log file {tmp_path / 'missing.log'} could not be read" in text
        assert recorded.keys == ["crash/error.log", "FAILED"]


class TestModule:
    def test_the_functions_report_to_the_prefix_in_the_environment(
        self, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(report, "_default", None)
        monkeypatch.setenv("SUPERVISOR_RUN_PREFIX", PREFIX)

        report.started()
        assert report.heartbeat(1, loss=0.5)
        report.log(1, loss=0.5)
        report.completed({"val_loss": 0.4})

        assert bucket_keys(fleet.s3, BUCKET) == [
            RUN + "COMPLETE",
            RUN + "final_metrics.json",
            RUN + "history.json",
            RUN + "status.json",
        ]
        assert repr(report.reporter()) == f"<Reporter {PREFIX} last_step=1 history=1 records>"

    def test_configure_replaces_the_modules_reporter(
        self, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(report, "_default", None)
        report.configure(f"s3://{BUCKET}/runs/other")
        report.failed("boom")

        assert bucket_keys(fleet.s3, BUCKET) == ["runs/other/FAILED", "runs/other/crash/error.log"]

    def test_a_copy_of_the_file_reports_a_run_from_a_python_with_only_boto3(
        self, fleet: Fleet, aws_env: dict[str, str], tmp_path: Path
    ) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        shutil.copy(REPORTER, elsewhere / "report.py")
        (elsewhere / "train.py").write_text(
            "import report\n"
            "report.started(wandb_run_id='w9')\n"
            "for step in range(1, 4):\n"
            "    report.heartbeat(step, loss=1.0 / step)\n"
            "    report.log(step, loss=1.0 / step)\n"
            "report.completed({'val_loss': 0.25})\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SUPERVISOR"))}
        env.update(
            aws_env, PYTHONPATH=sysconfig.get_paths()["purelib"], SUPERVISOR_RUN_PREFIX=PREFIX
        )

        probe = [sys.executable, "-S", "-c", "import supervisor"]
        assert subprocess.run(probe, env=env, cwd=elsewhere, check=False).returncode != 0

        done = subprocess.run(
            [sys.executable, "-S", "train.py"],
            env=env,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert done.returncode == 0, done.stderr
        body = fleet.s3.get_object(Bucket=BUCKET, Key=RUN + "final_metrics.json")["Body"].read()
        final = json.loads(body)
        assert (final["metrics"], final["total_steps"], final["wandb"]["run_id"]) == (
            {"val_loss": 0.25},
            3,
            "w9",
        )
        history = fleet.s3.get_object(Bucket=BUCKET, Key=RUN + "history.json")["Body"].read()
        assert [r["step"] for r in json.loads(history)["records"]] == [1, 2, 3]
        assert RUN + "COMPLETE" in bucket_keys(fleet.s3, BUCKET)

    def test_without_boto3_a_report_says_how_to_install_it_and_a_heartbeat_goes_on(
        self, tmp_path: Path
    ) -> None:
        shutil.copy(REPORTER, tmp_path / "report.py")
        script = (
            "import report\n"
            "print(report.heartbeat(1, loss=0.5))\n"
            "try:\n"
            "    report.started()\n"
            "except report.ReportError as exc:\n"
            "    print(exc)\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["SUPERVISOR_RUN_PREFIX"] = PREFIX

        done = subprocess.run(
            [sys.executable, "-S", "-c", script],  # -S: no site-packages, so no boto3
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "False",
            f"boto3 is not installed for {sys.executable}: pip install boto3",
        ]
        assert "heartbeat not written: boto3 is not installed" in done.stderr

    def test_it_parses_as_python_3_8_the_oldest_an_instance_may_run(self) -> None:
        ast.parse(REPORTER.read_text(), feature_version=(3, 8))

    def test_its_names_and_limits_are_the_supervisors(self) -> None:
        assert report.DEFAULT_MARKERS == DEFAULT_MARKERS
        assert report.COMPLETION_MARKER in DEFAULT_MARKERS
        assert report.DEFAULT_FAILURE_MARKER == DEFAULT_FAILURE_MARKER
        assert RunSpec.model_fields["heartbeat_file"].default == report.STATUS
        assert RunSpec.model_fields["crash_report"].default == report.CRASH_REPORT
        assert (report.FINAL_METRICS, report.HISTORY) == (reports.FINAL_METRICS, reports.HISTORY)
        assert report.MAX_STATUS_BYTES == reports.MAX_STATUS_BYTES
        assert report.MAX_REPORT_BYTES == reports.MAX_REPORT_BYTES
        assert report.HISTORY_LIMIT_BYTES < reports.MAX_REPORT_BYTES
