"""The job's side of the run database: a training script reports its progress, its final
metrics and its failure to the supervisor by writing files under its run prefix in S3.

    from supervisor import report       # or `import report`, with this file copied beside
                                        # the training script

    report.started(wandb_run_id=run.id, wandb_url=run.url)
    for step in range(steps):
        ...
        report.heartbeat(step, loss=loss)   # status.json, the heartbeat (each call writes)
        report.log(step, loss=loss)         # history.json's records (buffered in memory)
    report.completed({"val_loss": 0.21, "accuracy": 0.93})
    # or, when training fails:
    report.failed("CUDA error: out of memory", log_file="/var/log/train.log")

The run prefix is `SUPERVISOR_RUN_PREFIX=s3://bucket/prefix/`, or the argument of
`configure()` or of a `Reporter` made explicitly; the region, endpoint and credentials come
from the standard AWS chain. Nothing here talks to the supervisor: it reads the prefix, and
`supervisor.core.reports` parses what this module writes.

| call | writes under the run prefix |
|---|---|
| `started()` | `status.json` (state "started") |
| `heartbeat()` | `status.json` (state "running", the step and the metrics) |
| `completed()` | `final_metrics.json`, `history.json`, then the completion marker `COMPLETE` |
| `failed()` | `crash/error.log` (the error and the log file's tail), then `FAILED` |

Metric values must be finite numbers (`bool` is not one); a bad value raises `ValueError`
naming the metric before anything is written. `heartbeat()` is best effort: a write that
still fails after its retries is logged and the training goes on (a missed heartbeat is what
the supervisor's stall timeout is for). Every other call raises `ReportError`.

One self-contained file, standard library and boto3 only, so that it can be copied next to a
training script. It must not import anything from `supervisor`. Python 3.8 or later, like
`supervisor/instance.py`: it runs on the instance's own Python.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import numbers
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

RUN_PREFIX_ENV = "SUPERVISOR_RUN_PREFIX"
FORMAT = 1
STATUS = "status.json"  # the default heartbeat_file of supervisor.core.spec.RunSpec
FINAL_METRICS = "final_metrics.json"
HISTORY = "history.json"
CRASH_REPORT = "crash/error.log"  # the default crash_report of RunSpec
# Copied from supervisor.core.spec (a test keeps them equal): the marker written must be one
# the supervisor looks for without being told.
DEFAULT_MARKERS = ("training_complete.txt", "COMPLETE", "done")
DEFAULT_FAILURE_MARKER = "FAILED"
COMPLETION_MARKER = "COMPLETE"

HISTORY_LIMIT_BYTES = 340_000
"""history.json is kept at most this long: the supervisor stores up to ~340 KB whole."""
# The supervisor does not read larger files (supervisor.core.reports; a test keeps them equal).
MAX_STATUS_BYTES = 64 * 1024
MAX_REPORT_BYTES = 1024 * 1024
LOG_TAIL_BYTES = 64 * 1024
MAX_NAME_CHARS = 128
WRITE_ATTEMPTS = 3
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LOG = logging.getLogger("supervisor.report")
UTC = timezone.utc  # noqa: UP017 - datetime.UTC is 3.11+; instances may run 3.8
T = TypeVar("T")


class ReportError(Exception):
    """A report could not be written to S3, even after retries."""


# -- values --------------------------------------------------------------------------------


def parse_run_prefix(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix/` -> (bucket, prefix), the prefix empty or ending with '/'."""
    hint = "give the run prefix as s3://BUCKET/PREFIX/ (e.g. s3://my-runs/exp1/run42/)"
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ValueError(f"run prefix {url!r} is not valid: {hint}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"run prefix {url!r} has an invalid bucket {bucket!r}: {hint}")
    if _CONTROL.search(prefix) or prefix.startswith("/"):
        raise ValueError(f"run prefix {url!r} has an invalid key {prefix!r}: {hint}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def _name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS or _CONTROL.search(name):
        raise ValueError(
            f"metric name {name!r} is not valid: use a string of 1-{MAX_NAME_CHARS} "
            "printable characters (e.g. 'val_loss' or 'val/loss')"
        )
    return name


def _number(name: str, value: object) -> int | float:
    """A finite int or float; numpy scalars count, `bool` and tensors do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"metric {name!r} is {value!r} ({type(value).__name__}), not a number: report an "
            "int or a float (for a tensor, its .item())"
        )
    number = int(value) if isinstance(value, numbers.Integral) else float(value)
    try:
        finite = math.isfinite(number)
    except OverflowError:  # an int beyond any float: no reader could take it as a number
        finite = False
    if not finite:
        raise ValueError(
            f"metric {name!r} is {number}: only finite numbers can be reported; leave the "
            "metric out, or report the run as failed"
        )
    return number


def _metrics(values: Mapping[str, object]) -> dict[str, int | float]:
    return {_name(name): _number(name, value) for name, value in values.items()}


def _step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or int(step) < 0:
        raise ValueError(f"step {step!r} is not valid: give a whole number of at least 0")
    return int(step)


def _internal(name: object) -> bool:
    """W&B's own keys (`_step`, `_runtime`, `_timestamp`, `_wandb`...): never metrics."""
    return isinstance(name, str) and name.startswith("_")


def _empty_cell(value: object) -> bool:
    """What pandas writes for a metric not logged at a step: None, or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _given_history(history: object) -> list[dict[str, int | float]]:
    """The records of a history given to `completed()`: a list of records, or a table of
    columns of one length (`DataFrame.to_dict("list")`); W&B's `_step` is the step."""
    if isinstance(history, Mapping):
        columns = {name: list(cells) for name, cells in history.items()}
        lengths = {len(cells) for cells in columns.values()}
        if len(lengths) > 1:
            sizes = ", ".join(f"{name!r} {len(cells)}" for name, cells in columns.items())
            raise ValueError(f"history's columns differ in length ({sizes}): give one per step")
        rows = lengths.pop() if lengths else 0
        items: list[object] = [{n: cells[i] for n, cells in columns.items()} for i in range(rows)]
    elif isinstance(history, (str, bytes)) or not hasattr(history, "__iter__"):
        raise ValueError(
            f"history {history!r} is not valid: give a list of records or a mapping of "
            "columns (DataFrame.to_dict('records') or .to_dict('list'))"
        )
    else:
        items = list(history)
    records = []
    for item in items:
        if not isinstance(item, Mapping) or ("step" not in item and "_step" not in item):
            raise ValueError(f"history record {item!r} is not a mapping with a 'step'")
        step = item["step"] if "step" in item else item["_step"]
        if isinstance(step, float) and step.is_integer():  # pandas makes a step column float
            step = int(step)
        values = {
            k: v for k, v in item.items() if k != "step" and not _internal(k) and not _empty_cell(v)
        }
        records.append(_record(step, values))
    return records


def _record(step: object, values: Mapping[str, object]) -> dict[str, int | float]:
    """One history record: the step first, then its metrics."""
    if "step" in values:
        raise ValueError("a history record's metrics cannot be named 'step': it is the step")
    record: dict[str, int | float] = {"step": _step(step)}
    record.update(_metrics(values))
    return record


def _whole(value: object) -> int | None:
    """W&B's `_step`, if it is a whole number of at least 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or int(value) != value or value < 0:
        return None
    return int(value)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class History:
    """The records `log()` buffers, kept to `limit` bytes of history.json.

    When the records outgrow the limit they are thinned evenly: of the records added, the
    first and then every 2nd are kept (every 4th, 8th, ... as the run goes on), so what is left
    spans the whole run at an even spacing. The newest record is always kept, even off it."""

    _EMPTY = len(_compact({"format": FORMAT, "records": []}))

    def __init__(self, limit: int = HISTORY_LIMIT_BYTES) -> None:
        self.limit = limit
        self.stride = 1
        self._added = 0
        self._entries: list[tuple[int, dict[str, int | float], int]] = []  # (n, record, size)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"<History {len(self._entries)} records of {self._added} added, "
            f"{self.size} bytes, every {self.stride}>"
        )

    @property
    def size(self) -> int:
        """The length of history.json holding these records."""
        return self._EMPTY + self._bytes + max(len(self._entries) - 1, 0)

    @property
    def records(self) -> list[dict[str, int | float]]:
        return [record for _, record, _ in self._entries]

    def add(self, record: dict[str, int | float]) -> None:
        if self._entries and self._entries[-1][0] % self.stride:
            self._bytes -= self._entries.pop()[2]  # kept only as the newest; no longer is
        size = len(_compact(record))
        self._entries.append((self._added, record, size))
        self._added += 1
        self._bytes += size
        while self.size > self.limit and len(self._entries) > 1:
            self.stride *= 2
            newest = self._entries[-1]
            kept = [e for e in self._entries[:-1] if e[0] % self.stride == 0]
            self._entries = [*kept, newest]
            self._bytes = sum(e[2] for e in self._entries)

    def document(self) -> dict[str, object]:
        return {"format": FORMAT, "records": self.records}


# -- W&B -------------------------------------------------------------------------------------


def _active_wandb_run() -> Any:
    # A W&B run can only be active if the job imported wandb, so look in sys.modules rather
    # than importing it (which takes seconds, and which a job without W&B need not pay).
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _wandb_info(
    run: Any, fresher: Mapping[str, int | float]
) -> tuple[dict[str, object], dict[str, int | float]]:
    """The ids and the numbers of the summary of an active W&B run, updated with `fresher`
    values, and W&B's own numbers apart (`_step`, `_runtime`...: not metrics). Never raises:
    W&B's state must not keep the completion marker from being written."""
    info: dict[str, object] = {"run_id": None, "url": None, "project": None, "summary": {}}
    internal: dict[str, int | float] = {}
    try:
        info["run_id"] = _text_or_none(getattr(run, "id", None))
        info["url"] = _text_or_none(getattr(run, "url", None))
        info["project"] = _text_or_none(getattr(run, "project", None))
        numbers_only = {
            str(name): _number(str(name), value)
            for name, value in dict(run.summary).items()
            if isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        summary = {k: v for k, v in numbers_only.items() if not _internal(k)}
        info["summary"] = {**summary, **fresher}
        internal = {k: v for k, v in numbers_only.items() if _internal(k)}
    except Exception as exc:
        _LOG.warning("could not read the W&B run's summary: %s: %s", type(exc).__name__, exc)
    return info, internal


# -- writing to S3 ---------------------------------------------------------------------------


def _attempt_failed(what: str, attempt: int, attempts: int, error: str) -> None:
    _LOG.warning("%s: attempt %d of %d failed: %s", what, attempt, attempts, error)


def _gave_up(message: str) -> ReportError:
    return ReportError(message)


# >>> shared S3 helpers: the same text in supervisor/instance.py and supervisor/report.py >>>
# Both files run alone on an instance (the standard library and boto3), so neither imports
# the other; tests/instance/test_shared_code.py fails when the two copies differ. Each file
# defines `_attempt_failed` (how to log a failed attempt) and `_gave_up` (its error type).

ONE_LINE_LIMIT = 2_000
# S3 is strongly consistent: a bucket or key that is missing stays missing however often we
# ask, and every retry delays the stop of an instance that is costing money.
DEFINITIVE_CODES = frozenset({"NoSuchBucket", "NoSuchKey"})


def one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= ONE_LINE_LIMIT else line[: ONE_LINE_LIMIT - 1] + "…"


def _aws_errors() -> tuple[type[Exception], ...]:
    """botocore's error types, imported when first needed (see `_s3_client`)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (read without importing botocore)."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return str(error.get("Code")) if isinstance(error, dict) else None


def _describe(exc: BaseException) -> str:
    code = _error_code(exc)
    if code is not None:
        response = getattr(exc, "response", {})
        return one_line(f"{code}: {response['Error'].get('Message') or exc}")
    return one_line(f"{type(exc).__name__}: {exc}")


def _with_retries(what: str, attempts: int, action: Callable[[], T]) -> T:
    """Retry `action` on any AWS or network error, 0.5 s, 1 s, 2 s... apart (boto3 retries
    each attempt itself too); a definitive error (`DEFINITIVE_CODES`) is not retried."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except _aws_errors() as exc:
            _attempt_failed(what, attempt, attempts, _describe(exc))
            if _error_code(exc) in DEFINITIVE_CODES:
                raise _gave_up(f"{what} failed: {_describe(exc)}") from exc
            if attempt == attempts:
                raise _gave_up(
                    f"{what} failed after {attempts} attempt(s): {_describe(exc)}"
                ) from exc
            time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _s3_client(region_name: str | None, *, read_timeout_s: int) -> S3Client:
    # Imported here, not at the top: boto3 takes most of a second to import, which a usage
    # error or a bad metric need not pay, and the rest works where boto3 is not installed.
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise _gave_up(f"boto3 is not installed for {sys.executable}: pip install boto3") from exc
    config = Config(
        region_name=region_name,
        connect_timeout=10,
        read_timeout=read_timeout_s,
        retries={"mode": "standard", "max_attempts": 3},
    )
    return boto3.client("s3", config=config)


# <<< shared S3 helpers <<<


def _log_tail(log_file: str | os.PathLike[str]) -> str:
    """The last LOG_TAIL_BYTES of a log file, from a line start; a note if it is unreadable."""
    path = Path(log_file)
    try:
        with path.open("rb") as stream:
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(size - LOG_TAIL_BYTES, 0))
            data = stream.read(LOG_TAIL_BYTES)
    except OSError as exc:
        return f"\n--- the log file {path} could not be read: {exc} ---\n"
    if size > LOG_TAIL_BYTES:
        data = data.partition(b"\n")[2]  # the first line was cut
    heading = f"the last {len(data)} bytes of {path}" if size > LOG_TAIL_BYTES else str(path)
    text = data.decode("utf-8", errors="replace")
    return f"\n--- {heading} ---\n{text}" + ("" if text.endswith("\n") or not text else "\n")


class Reporter:
    """Writes one run's reports under its run prefix. Thread-safe.

    `run_prefix` is `s3://bucket/prefix/`, by default `$SUPERVISOR_RUN_PREFIX`; `client` an
    S3 client (by default one from the standard AWS chain, made at the first write)."""

    def __init__(self, run_prefix: str | None = None, *, client: S3Client | None = None) -> None:
        url = run_prefix if run_prefix is not None else os.environ.get(RUN_PREFIX_ENV)
        if not url:
            raise ValueError(
                f"no run prefix: set {RUN_PREFIX_ENV}=s3://BUCKET/PREFIX/ (the prefix the "
                "supervisor watches), or pass it: Reporter('s3://BUCKET/PREFIX/')"
            )
        self.bucket, self.prefix = parse_run_prefix(url)
        self._client = client
        self._lock = threading.RLock()
        self.history = History()
        self.last_step: int | None = None
        self.wandb_run_id: str | None = None
        self.wandb_url: str | None = None
        self.total_steps: int | None = None

    def __repr__(self) -> str:
        return (
            f"<Reporter {self.url()} last_step={self.last_step} "
            f"history={len(self.history)} records>"
        )

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    # -- the reports ---------------------------------------------------------------------

    def started(
        self,
        wandb_run_id: str | None = None,
        wandb_url: str | None = None,
        *,
        total_steps: int | None = None,
    ) -> None:
        """Write status.json with state "started". W&B ids not given are taken from the
        active W&B run, if there is one; later heartbeats repeat them. `total_steps` (the step
        training ends at) lets the supervisor estimate the end and check often around it;
        later heartbeats repeat it."""
        run = _active_wandb_run()
        if run is not None:
            wandb_run_id = wandb_run_id or _text_or_none(getattr(run, "id", None))
            wandb_url = wandb_url or _text_or_none(getattr(run, "url", None))
        with self._lock:
            self.wandb_run_id, self.wandb_url = wandb_run_id, wandb_url
            if total_steps is not None:
                self.total_steps = _step(total_steps)
            self._put(STATUS, self._status("started", None, {}), "application/json")

    def heartbeat(self, step: int, *, total_steps: int | None = None, **metrics: float) -> bool:
        """Write status.json with state "running", the step and these metrics (and
        `total_steps`, given here or to `started`: the supervisor then estimates when
        training ends from the step rate). True if it was written; False if S3 refused it
        after retries (logged; the job should go on)."""
        step = _step(step)
        with self._lock:
            if total_steps is not None:
                self.total_steps = _step(total_steps)
            body = self._status("running", step, _metrics(metrics))
            self.last_step = step
            try:
                self._put(STATUS, body, "application/json")
            except ReportError as exc:
                _LOG.warning("heartbeat not written: %s", exc)
                return False
        return True

    def log(self, step: int, **metrics: float) -> None:
        """Buffer one history record (`{"step": N, name: value, ...}`); `completed()` writes
        them. The buffer keeps history.json under HISTORY_LIMIT_BYTES (~340 KB): past that,
        records are thinned evenly over the run, always keeping the newest (see `History`)."""
        record = _record(step, metrics)
        with self._lock:
            self.history.add(record)
            self.last_step = int(record["step"])

    def completed(
        self,
        final_metrics: Mapping[str, float] | None = None,
        history: Sequence[Mapping[str, object]] | Mapping[str, Sequence[object]] | None = None,
        *,
        total_steps: int | None = None,
    ) -> None:
        """Write final_metrics.json, history.json, then the completion marker, in that order:
        once the supervisor sees the marker, the other two are there.

        `history` replaces what `log()` buffered (same records, same bound): a list of
        records, or a table of columns (`DataFrame.to_dict("list")`); W&B's `_step` is a
        record's step, its other `_` keys and empty cells (None, NaN) are left out.
        W&B's own keys in `final_metrics` (`_step`, `_runtime`, ...) are not metrics either:
        `_step` is the total steps unless `total_steps` is given. `total_steps` is by default
        the last step reported. With an active W&B run, its ids, project and the numbers of its
        summary go into final_metrics.json too; as W&B commits a row logged with `step=N` only
        later, the summary is brought up to date with the last record and the final metrics."""
        if final_metrics is not None and not isinstance(final_metrics, Mapping):
            raise ValueError(
                f"final_metrics {final_metrics!r} is not valid: give a mapping of metric names "
                "to numbers, e.g. {'val_loss': 0.21}"
            )
        given_metrics = dict(final_metrics or {})
        metrics = _metrics({k: v for k, v in given_metrics.items() if not _internal(k)})
        if total_steps is None and given_metrics.get("_step") is not None:
            total_steps = given_metrics["_step"]  # type: ignore[assignment]
        if total_steps is not None:
            total_steps = _step(total_steps)
        given: History | None = None
        if history is not None:
            given = History()
            for record in _given_history(history):
                given.add(record)
        with self._lock:
            records = given if given is not None else self.history
            last = records.records[-1] if len(records) else {}
            known = [s for s in (self.last_step, last.get("step")) if s is not None]
            # W&B commits a row logged with step=N only when the next one comes (or at
            # finish): its summary lacks the last row, which the last record and the final
            # metrics given have.
            fresher = {**{k: v for k, v in last.items() if k != "step"}, **metrics}
            wandb, internal = self._wandb(fresher)
            if total_steps is None:
                total_steps = int(max(known)) if known else _whole(internal.get("_step"))
            final = {
                "format": FORMAT,
                "metrics": metrics,
                "total_steps": total_steps,
                "runtime_s": internal.get("_runtime"),
                "wandb": wandb,
                "time": _now(),
            }
            final_body = self._encode(FINAL_METRICS, final, MAX_REPORT_BYTES)
            history_body = self._encode(HISTORY, records.document(), MAX_REPORT_BYTES)
            self._put(FINAL_METRICS, final_body, "application/json")
            self._put(HISTORY, history_body, "application/json")
            self._put(COMPLETION_MARKER, f"completed at {_now()}\n".encode(), "text/plain")

    def failed(
        self, error: str | BaseException, log_file: str | os.PathLike[str] | None = None
    ) -> None:
        """Write crash/error.log (the error, a traceback for an exception, then the last
        64 KiB of `log_file`), then the failure marker FAILED whose body is the error in one
        line: the supervisor records that line as the reason the run crashed."""
        if isinstance(error, BaseException):
            summary = one_line(f"{type(error).__name__}: {error}")
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        elif isinstance(error, str):
            summary, text = one_line(error), error
        else:
            raise ValueError(f"error {error!r} is not valid: give a string or an exception")
        summary = summary or "failed (no reason given)"
        text = (text or summary)[:LOG_TAIL_BYTES]
        if not text.endswith("\n"):
            text += "\n"
        if log_file is not None:
            text += _log_tail(log_file)
        with self._lock:
            self._put(CRASH_REPORT, text.encode("utf-8", errors="replace"), "text/plain")
            self._put(DEFAULT_FAILURE_MARKER, (summary + "\n").encode(), "text/plain")

    # -- helpers ---------------------------------------------------------------------------

    def _status(self, state: str, step: int | None, metrics: dict[str, int | float]) -> bytes:
        status = {
            "format": FORMAT,
            "state": state,
            "step": step,
            "total_steps": self.total_steps,
            "metrics": metrics,
            "wandb_run_id": self.wandb_run_id,
            "wandb_url": self.wandb_url,
            "time": _now(),
        }
        return self._encode(STATUS, status, MAX_STATUS_BYTES)

    def _wandb(
        self, fresher: Mapping[str, int | float]
    ) -> tuple[dict[str, object] | None, dict[str, int | float]]:
        """What final_metrics.json says of W&B, and W&B's own summary numbers apart."""
        run = _active_wandb_run()
        if run is not None:
            return _wandb_info(run, fresher)
        if self.wandb_run_id is None and self.wandb_url is None:
            return None, {}
        ids: dict[str, object] = {
            "run_id": self.wandb_run_id,
            "url": self.wandb_url,
            "project": None,
            "summary": {},
        }
        return ids, {}

    def _encode(self, key: str, document: object, limit: int) -> bytes:
        body = _compact(document).encode()
        if len(body) > limit:
            raise ValueError(
                f"{key} would be {len(body)} bytes; the supervisor reads at most {limit}: "
                "report fewer metrics"
            )
        return body

    def _s3(self) -> S3Client:
        if self._client is None:
            self._client = _s3_client(None, read_timeout_s=60)
        return self._client

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        s3 = self._s3()  # outside the retries: a missing boto3 is not worth retrying

        def put() -> None:
            s3.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=body,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )

        _with_retries(f"write of {self.url(key)}", WRITE_ATTEMPTS, put)


# -- the module's reporter -------------------------------------------------------------------

_default: Reporter | None = None
_default_lock = threading.Lock()


def configure(run_prefix: str | None = None, *, client: S3Client | None = None) -> Reporter:
    """Make (or replace) the reporter the module's functions use, and return it. Without
    this, the first call makes one from $SUPERVISOR_RUN_PREFIX."""
    global _default
    with _default_lock:
        _default = Reporter(run_prefix, client=client)
        return _default


def reporter() -> Reporter:
    """The reporter the module's functions use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Reporter()
        return _default


def started(
    wandb_run_id: str | None = None,
    wandb_url: str | None = None,
    *,
    total_steps: int | None = None,
) -> None:
    """`Reporter.started` on the module's reporter."""
    reporter().started(wandb_run_id=wandb_run_id, wandb_url=wandb_url, total_steps=total_steps)


def heartbeat(step: int, *, total_steps: int | None = None, **metrics: float) -> bool:
    """`Reporter.heartbeat` on the module's reporter."""
    return reporter().heartbeat(step, total_steps=total_steps, **metrics)


def log(step: int, **metrics: float) -> None:
    """`Reporter.log` on the module's reporter."""
    reporter().log(step, **metrics)


def completed(
    final_metrics: Mapping[str, float] | None = None,
    history: Sequence[Mapping[str, object]] | Mapping[str, Sequence[object]] | None = None,
    *,
    total_steps: int | None = None,
) -> None:
    """`Reporter.completed` on the module's reporter."""
    reporter().completed(final_metrics, history, total_steps=total_steps)


def failed(error: str | BaseException, log_file: str | os.PathLike[str] | None = None) -> None:
    """`Reporter.failed` on the module's reporter."""
    reporter().failed(error, log_file=log_file)
