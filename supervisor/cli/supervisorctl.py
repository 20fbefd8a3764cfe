"""`supervisorctl`: attach runs to the supervisor daemon, inspect them, follow them.

Each verb is a row of the command table (`COMMANDS`): its help, what adds its arguments and
what carries it out. `attach`'s flags and its request are built from the run-spec field table
(`core.spec_fields`) in `supervisor.cli.attach`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from supervisor import __version__
from supervisor.adapters.control_client import (
    MAX_BYTE_DIGITS,
    SocketClient,
    parse_since_days,
    run_path,
)
from supervisor.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    DaemonLocation,
    ago,
    duration,
    fail,
    locate_daemon,
    printable,
    run_id_argument,
    user_errors,
)
from supervisor.cli.verbs import QUERY_COMMANDS
from supervisor.core.attachments import AttachmentKind
from supervisor.core.defaults import (
    DEFAULT_FAILURE_MARKER,
    DEFAULT_MARKERS,
    DEFAULT_TRAINING_LOG,
    DEFAULT_TRAINING_LOG_BYTES,
    RUN_TAG,
)
from supervisor.core.errors import InvalidInput

if TYPE_CHECKING:
    from supervisor.adapters.control import ControlClient
    from supervisor.adapters.protocol import ReportView, TailItem, ZombieList
    from supervisor.cli.views import RunDetail

# This module is imported by every verb, so it imports only what parsing the arguments needs;
# each verb imports the rest (pydantic, aiohttp for the streaming routes) when it runs.

DESCRIPTION = """\
Control the training-run supervisor (supervisord): attach runs, see their phase, follow them.

A run is one training job on one EC2 instance, with an S3 run prefix where the job writes a
completion marker when it is done. Once a marker appears the supervisor waits a grace period,
then stops (or terminates) the instance, retrying AWS errors that are worth retrying, and
records every transition.
"""

EPILOG = f"""\
examples:
  supervisorctl attach exp1-lr3e-4 --instance-id i-0abcd1234ef567890 \\
      --s3-prefix s3://my-runs/exp1/lr3e-4/ --on-complete terminate --grace-s 120
  supervisorctl attach --spec config/run.example.toml
  supervisorctl status                  table of runs
  supervisorctl status exp1-lr3e-4 --json
  supervisorctl tail -f exp1-lr3e-4     follow transitions until the run ends
  supervisorctl tail --training -f exp1-lr3e-4   follow the job's log (logs/train.log)
  supervisorctl stop exp1-lr3e-4        stop its instance now, through the same safe path

completion: any of the markers {", ".join(DEFAULT_MARKERS)} (change with --marker)
under the run prefix; or every --expect key present and unchanged across two checks.
A {DEFAULT_FAILURE_MARKER} marker means the job crashed; its text is recorded as the reason.

daemon: found through its state directory: SUPERVISOR_STATE_DIR, else state_dir in the
settings file supervisord reads (--config, else $SUPERVISOR_CONFIG, else
~/.config/supervisor/supervisord.toml). SUPERVISOR_CLIENT_TIMEOUT_S (60) bounds the wait.

exit codes: 0 success, 1 error, 2 usage.
"""


class Command(NamedTuple):
    """A verb of supervisorctl: a row of `COMMANDS`. (A NamedTuple, as the rows of the
    run-spec field table: defined at every start, where a dataclass costs a millisecond.)"""

    name: str
    help: str
    run: Callable[[argparse.Namespace, DaemonLocation], int]
    """Carries it out, importing what it needs when it runs."""
    arguments: Callable[[argparse.ArgumentParser], None] | None
    """Adds its arguments to its parser; None: a query verb, whose parser
    `supervisor.cli.queries.add_query_commands` builds."""
    description: str | None = None
    preformatted: bool = False
    """The description keeps its own line breaks (a list, examples)."""

    @property
    def needs_daemon(self) -> bool:
        """It talks to supervisord (the query verbs read the database file instead)."""
        return self.arguments is not None


def _parser(named: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `named` (the command line's words), each verb's arguments only
    when it is named, so that a verb does not build (or import) what other verbs need."""
    parser = argparse.ArgumentParser(
        prog="supervisorctl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the daemon's TOML settings file, to find its state directory (default: "
        "$SUPERVISOR_CONFIG, else ~/.config/supervisor/supervisord.toml if it exists: the "
        "file supervisord reads)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        if command.arguments is None:
            continue
        if named is not None and command.name not in named:
            commands.add_parser(command.name, help=command.help)
            continue
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter
            if command.preformatted
            else argparse.HelpFormatter,
        )
        command.arguments(sub)
    if named is None or not QUERY_COMMANDS.keys().isdisjoint(named):
        from supervisor.cli.queries import add_query_commands

        add_query_commands(commands)  # runs, show, compare, export: the run database, read-only
    else:
        for name, text in QUERY_COMMANDS.items():
            commands.add_parser(name, help=text)
    return parser


# -- argument types ------------------------------------------------------------------------------


def _byte_count(text: str) -> int:
    """`--bytes N`: a whole number of bytes, as the daemon takes it (at most 18 digits)."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_BYTE_DIGITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of bytes: give a whole number from 0 to "
            f"{'9' * MAX_BYTE_DIGITS} (no exponent), e.g. --bytes 65536"
        )
    return int(text)


def _since_days(text: str) -> float:
    try:
        return parse_since_days(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- each verb's arguments ----------------------------------------------------------------------


def _attach_arguments(attach: argparse.ArgumentParser) -> None:
    """The run spec's flags, from its field table (loaded for attach only)."""
    from supervisor.cli.attach import add_arguments

    add_arguments(attach)


def _status_arguments(status: argparse.ArgumentParser) -> None:
    status.add_argument(
        "run_id", nargs="?", type=run_id_argument, metavar="RUN_ID", help="one run, in detail"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")


def _tail_arguments(tail: argparse.ArgumentParser) -> None:
    tail.add_argument("run_id", type=run_id_argument, metavar="RUN_ID")
    tail.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep following until the run ends (Ctrl-C to leave)",
    )
    training = tail.add_argument_group("the training log (--training)")
    training.add_argument(
        "--training",
        action="store_true",
        help="the job's training log from the run prefix instead of the transitions",
    )
    training.add_argument(
        "--key",
        metavar="KEY",
        help=f"the log's key under the run prefix (default {DEFAULT_TRAINING_LOG})",
    )
    start = training.add_mutually_exclusive_group()
    start.add_argument(
        "--bytes",
        type=_byte_count,
        metavar="N",
        help=f"begin N bytes before the end of the log, at the next whole line (default "
        f"{DEFAULT_TRAINING_LOG_BYTES}); 0 prints only what is appended from now",
    )
    start.add_argument(
        "--from-start", action="store_true", help="print the whole log from its first byte"
    )


def _attach_file_arguments(attach_file: argparse.ArgumentParser) -> None:
    attach_file.add_argument("run_id", type=run_id_argument, metavar="RUN_ID")
    attach_file.add_argument(
        "--kind",
        required=True,
        choices=[kind.value for kind in AttachmentKind],
        help="what it is",
    )
    attach_file.add_argument(
        "uri", metavar="URI", help="s3://BUCKET/KEY or an http(s):// link (not a local path)"
    )
    attach_file.add_argument("--json", action="store_true", help="print the attachment as JSON")


def _resume_arguments(resume: argparse.ArgumentParser) -> None:
    resume.add_argument("run_id", type=run_id_argument, metavar="RUN_ID")
    resume.add_argument(
        "--from-scratch",
        action="store_true",
        help="resume without a verified checkpoint (nothing is restored)",
    )
    resume.add_argument("--json", action="store_true", help="print the run as JSON")


def _request_arguments(request: argparse.ArgumentParser) -> None:
    """stop, terminate, detach: a run id."""
    request.add_argument("run_id", type=run_id_argument, metavar="RUN_ID")
    request.add_argument("--json", action="store_true", help="print the run as JSON")


def _zombies_arguments(zombies: argparse.ArgumentParser) -> None:
    zombies.add_argument("--json", action="store_true", help="machine-readable output")


def _report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument(
        "--since",
        type=_since_days,
        default=7.0,
        metavar="DAYS",
        help="how far back to report, counted from now: 7d, 12h, 30m, or a number of days "
        "(default 7; fractions allowed)",
    )
    report.add_argument("--json", action="store_true", help="machine-readable output")


ZOMBIES_DESCRIPTION = f"""\
List zombie instances, with their age (since the daemon marked them) and the reason:

  - an instance still running after its run ended (stopped, terminated, crashed or
    interrupted; not a run with --on-complete none, a detached one or a failed one);
  - an instance tagged {RUN_TAG} that no active run has as its instance.

With SUPERVISOR_AUTO_TERMINATE=true the daemon terminates each zombie
SUPERVISOR_ZOMBIE_WAIT_S (300) seconds after marking it, with attempts at least
SUPERVISOR_TERMINATION_COOLDOWN_S (300) seconds apart. A zombie of a run with
--checkpoint-dir and no verified checkpoint is stopped instead, never terminated (its EBS
volume keeps the data). Without it (the default) zombies are only listed. Every attempt is
recorded: `supervisorctl report` sums them up.
"""

REPORT_DESCRIPTION = """\
Per UTC day: zombies terminated (confirmed, or already gone), zombies stopped instead,
attempts and their success rate, mean time from marking to confirmed termination, and
failed attempts. Then the runs attached in the window by outcome, and the crash rate
(crashed among the runs with an outcome).
"""


TAIL_DESCRIPTION = f"""\
Without --training: the run's transitions and monitor events; -f follows them until the run
ends.

With --training: the job's log object under the run prefix ({DEFAULT_TRAINING_LOG} unless
--key says otherwise), read by the daemon with ranged GETs, so this machine needs no AWS
credentials. It starts {DEFAULT_TRAINING_LOG_BYTES} bytes before the end (change with --bytes or
--from-start). With -f the daemon reads on every SUPERVISOR_TRAINING_LOG_POLL_S (2) seconds
from where it stopped, and each new whole line is printed once, until the run has ended and
the log stopped growing. A log not written yet is waited for; a log that comes back shorter
was truncated or replaced and is printed again from its start. Notes like these go to
stderr, the log to stdout.

examples:
  supervisorctl tail --training -f exp1-lr3e-4
  supervisorctl tail --training --key logs/rank0.log --from-start exp1-lr3e-4 > rank0.log
"""

MIGRATE_DB_DESCRIPTION = """\
Copy the run database of this state directory (its SQLite file: runs, transitions,
instances, actions, attachments, run data, report problems, zombies, terminations, audit)
into an empty PostgreSQL database, for running several supervisord replicas on it.

The target is migrated to this version's schema, then every row is copied (ids kept) in
one transaction; each table's row count is checked against the source before it commits.
A target holding any run data is refused. Stop the daemon first (`supervisord stop`): the
copy is refused while it runs. Afterwards set SUPERVISOR_DATABASE_URL to the same URL for
every replica; the SQLite file is left as it was.

example:
  supervisord stop
  supervisorctl migrate-db --to postgresql://supervisor@db.internal:5432/supervisor
"""


ATTACH_FILE_DESCRIPTION = """\
Record where a file or page about the run is kept: `status RUN_ID` lists it, and
for a crash log also shows its last lines. URI is one of:

  s3://BUCKET/KEY   an object; it must exist. Its size is recorded (and a crash log's last
                    lines) when the daemon may read it.
  https://HOST/...  a link (http:// too: it is only recorded, never fetched); no user name
                    or password in it.

A local path is refused: upload the file first (aws s3 cp FILE s3://BUCKET/KEY).
Attaching the same kind and URI again refreshes it.

examples:
  supervisorctl attach-file exp1 --kind crash-log s3://my-runs/exp1/dmesg.txt
  supervisorctl attach-file exp1 --kind analysis https://docs.example.com/exp1-postmortem
"""


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = _parser(named=words).parse_args(words)
    daemon = locate_daemon(args.config)
    command = COMMANDS[args.command]
    with user_errors():
        if not command.needs_daemon:  # read the database file: no daemon needed
            return command.run(args, daemon)
        try:
            return command.run(args, daemon)
        except KeyboardInterrupt:
            return EXIT_OK


# -- each verb, carried out -----------------------------------------------------------------------


def _client(daemon: DaemonLocation) -> SocketClient:
    """The light client: one request per call over the Unix socket, without aiohttp."""
    return SocketClient(
        daemon.socket_path, timeout_s=daemon.client_timeout_s, pid_path=daemon.pid_path
    )


def _attach(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    from supervisor.cli.attach import request_body

    body = request_body(args)
    run = _client(daemon).call("POST", "/v1/runs", body)
    _print_run(run, as_json=args.json, verb="attached")
    return EXIT_OK


def _status(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    if args.run_id:
        _print_detail(_client(daemon).call("GET", run_path(args.run_id)), as_json=args.json)
    else:
        _print_table(_client(daemon).call("GET", "/v1/runs"), as_json=args.json)
    return EXIT_OK


def _attach_file(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    body = {"kind": args.kind, "uri": args.uri}
    answer = _client(daemon).call("POST", run_path(args.run_id, "attachments"), body)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        from supervisor.cli.views import AttachmentView

        attached = AttachmentView.from_json(answer)
        size = f", {attached.size} bytes" if attached.size is not None else ""
        print(f"{args.run_id}: attached {attached.kind}: {printable(attached.uri)}{size}")
    return EXIT_OK


def _resume(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    params = {"from_scratch": "1"} if args.from_scratch else {}
    run = _client(daemon).call("POST", run_path(args.run_id, "resume"), None, **params)
    _print_run(run, as_json=args.json, verb="resume requested")
    return EXIT_OK


def _request(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    """stop, terminate, detach: the verb is the request."""
    run = _client(daemon).call("POST", run_path(args.run_id, args.command))
    _print_run(run, as_json=args.json, verb=f"{args.command} requested")
    return EXIT_OK


def _tail(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    if not args.training:
        flags = {"--key": args.key, "--bytes": args.bytes, "--from-start": args.from_start or None}
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            fail(f"{', '.join(given)}: only with --training (the training log)", EXIT_USAGE)

    async def show(client: ControlClient) -> None:
        if args.training:
            await _tail_training(client, args)
        else:
            async for item in client.tail(args.run_id, follow=args.follow):
                print(_tail_line(item), flush=True)

    return _streaming(daemon, show, follow=args.follow)


async def _tail_training(client: ControlClient, args: argparse.Namespace) -> None:
    """The log to stdout as it comes; the daemon's notes about it to stderr."""
    line_open = False
    async for item in client.training_log(
        args.run_id,
        key=args.key or DEFAULT_TRAINING_LOG,
        follow=args.follow,
        offset=0 if args.from_start else None,
        last=args.bytes,
    ):
        if item.kind == "lines":
            sys.stdout.write(item.text)
            sys.stdout.flush()
            line_open = not item.text.endswith("\n")
        elif item.kind == "notice":
            print(f"supervisorctl: {printable(item.text)}", file=sys.stderr, flush=True)
        else:
            fail(item.text)
    if line_open:
        print()


def _zombies(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    async def show(client: ControlClient) -> None:
        _print_zombies(await client.zombies(), as_json=args.json)

    return _streaming(daemon, show)


def _report(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    async def show(client: ControlClient) -> None:
        _print_report(await client.report(args.since), days=args.since, as_json=args.json)

    return _streaming(daemon, show)


def _streaming(
    daemon: DaemonLocation,
    use: Callable[[ControlClient], Awaitable[None]],
    *,
    follow: bool = False,
) -> int:
    """Run `use` with the aiohttp client: for streams, and answers printed from the
    protocol's models."""
    import asyncio

    from supervisor.adapters.control import ControlClient

    # A followed stream may be quiet for minutes (no check due, a log not growing).
    timeout_s = None if follow else daemon.client_timeout_s

    async def session() -> None:
        async with ControlClient(
            daemon.socket_path, timeout_s=timeout_s, pid_path=daemon.pid_path
        ) as client:
            await use(client)

    asyncio.run(session())
    return EXIT_OK


def _query(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    from supervisor.cli.queries import run_query

    return run_query(args, daemon.run_database)


def _migrate_db(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    from supervisor.cli.migrate_db import migrate_db

    return migrate_db(args, daemon)


def _migrate_db_arguments(parser: argparse.ArgumentParser) -> None:
    from supervisor.cli.migrate_db import add_arguments

    add_arguments(parser)


# -- issue 15: notifications --------------------------------------------------------------------

NOTIFY_TEST_DESCRIPTION = """\
Send a test message to every URL of SUPERVISOR_NOTIFY_URLS and print each one's result (the
URL redacted). It goes through the running supervisord, so it tests the daemon's own settings
and network path; with the daemon down it says so. Exit status 1 if any URL failed.

examples:
  supervisorctl notify-test
  supervisorctl notify-test --json
"""


def _notify_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON answer")


def _notify_test(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    answer = _client(daemon).call("POST", "/v1/notify-test")
    results = answer["results"]
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        for result in results:
            outcome = "ok" if result["last_ok"] else f"FAILED: {result['last_error']}"
            print(f"{printable(result['target'])}: {printable(outcome)}")
    return EXIT_OK if all(r["last_ok"] for r in results) else 1


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "attach",
            "start watching a run",
            _attach,
            _attach_arguments,
            "Register a run with the daemon. Everything is validated before anything is "
            "stored; flags override keys of --spec.",
        ),
        Command("status", "runs and their phases", _status, _status_arguments),
        Command(
            "tail",
            "a run's transitions and monitor events, or with --training its training log",
            _tail,
            _tail_arguments,
            TAIL_DESCRIPTION,
            preformatted=True,
        ),
        Command(
            "attach-file",
            "attach a crash log, an analysis, a conversation or a link to a run",
            _attach_file,
            _attach_file_arguments,
            ATTACH_FILE_DESCRIPTION,
            preformatted=True,
        ),
        Command(
            "resume",
            "resume a stopped, terminated, crashed or interrupted run",
            _resume,
            _resume_arguments,
            "Start the run's instance again (or launch a new one from the spec's launch "
            "template), restore its newest verified checkpoint, start resume_command, and "
            "return the run to running with its attempt counter increased.",
        ),
        Command(
            "stop", "stop the run's instance now (a person's request)", _request, _request_arguments
        ),
        Command("terminate", "terminate the run's instance now", _request, _request_arguments),
        Command(
            "detach",
            "stop watching the run; its instance is left as it is",
            _request,
            _request_arguments,
        ),
        Command(
            "zombies",
            "instances left running after their run ended, or tagged with no run",
            _zombies,
            _zombies_arguments,
            ZOMBIES_DESCRIPTION,
            preformatted=True,
        ),
        Command(
            "report",
            "zombie terminations per day, runs by outcome, crash rate",
            _report,
            _report_arguments,
            REPORT_DESCRIPTION,
            preformatted=True,
        ),
        Command(
            "migrate-db",
            "copy this state directory's SQLite run database into an empty PostgreSQL one",
            _migrate_db,
            _migrate_db_arguments,
            MIGRATE_DB_DESCRIPTION,
            preformatted=True,
        ),
        Command(
            "notify-test",
            "send a test notification to every configured URL and show each result",
            _notify_test,
            _notify_test_arguments,
            NOTIFY_TEST_DESCRIPTION,
            preformatted=True,
        ),
        *(Command(name, text, _query, None) for name, text in QUERY_COMMANDS.items()),
    )
}
"""Every verb, in the order of `--help`."""


def _wire(answer: Any) -> Any:
    """The daemon's JSON as it came, or a protocol model (as `supervisor.client` returns
    them) turned into that JSON: the printers take either."""
    if isinstance(answer, dict) or (
        isinstance(answer, list) and all(isinstance(item, dict) for item in answer)
    ):
        return answer
    from supervisor.adapters.control import jsonable

    return jsonable(answer)


def _print_run(answer: Any, *, as_json: bool, verb: str) -> None:
    """A RunView answer; `--json` prints the daemon's JSON (the protocol's field names)."""
    answer = _wire(answer)
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        from supervisor.cli.views import RunView

        run = RunView.from_json(answer)
        print(f"{run.run_id}: {verb}; phase {run.phase} ({printable(run.reason)})")


def _print_table(answer: Any, *, as_json: bool) -> None:
    answer = _wire(answer)
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    from supervisor.cli.views import RunView
    from supervisor.core.run import Phase

    runs = [RunView.from_json(item) for item in answer]
    if not runs:
        print("no runs attached: `supervisorctl attach --help` shows how")
        return
    rows = [("RUN ID", "PHASE", "OUTCOME", "INSTANCE", "IN PHASE", "NEXT CHECK", "ETA")]
    for run in runs:
        next_check = f"in {ago(run.next_check_at)}" if run.next_check_at else "-"
        if run.phase == Phase.GRACE and run.grace_until:
            next_check = f"grace ends in {ago(run.grace_until)}"
        rows.append(
            (
                run.run_id,
                run.phase,
                run.outcome or "-",
                run.instance_id,
                ago(run.phase_since),
                next_check,
                _eta(run.estimated_end),
            )
        )
    _print_rows(rows)


def _eta(estimated_end: datetime | None) -> str:
    """How long until the estimated end of training; "-" without an estimate."""
    if estimated_end is None:
        return "-"
    if estimated_end <= datetime.now(UTC):
        return f"due {ago(estimated_end)} ago"
    return f"in {ago(estimated_end)}"


def _print_detail(answer: Any, *, as_json: bool) -> None:
    answer = _wire(answer)
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    from supervisor.cli.views import RunDetail

    run = RunDetail.from_json(answer)
    print(f"run {run.run_id}: {run.phase}" + (f" ({run.outcome})" if run.outcome else ""))
    print(f"  instance   {run.instance_id} ({run.region}), on completion: {run.on_complete}")
    print(f"  prefix     {run.s3_prefix}")
    print(f"  reason     {printable(run.reason)}")
    if run.estimated_end is not None:
        print(f"  ETA        {_eta(run.estimated_end)} ({run.estimated_end:%Y-%m-%d %H:%M:%S} UTC)")
    if run.error_code:
        print(f"  error      {printable(run.error_code)}")
    if run.checkpoint or run.spec.get("checkpoint_dir"):
        checkpoint = printable(run.checkpoint or "not yet taken")
        print(f"  checkpoint {checkpoint}{_checkpoint_facts(run)}")
    if run.attempt > 1 or len(run.instances) > 1:
        history = ", ".join(f"{i.instance_id} ({i.source})" for i in run.instances)
        print(f"  attempt    {run.attempt}; instances: {history}")
    if run.max_duration_at is not None:
        limit = duration(float(run.spec.get("max_duration") or 0))
        print(f"  time left  {ago(run.max_duration_at)} of max_duration {limit}, then a stop")
    if run.verified_attempt is not None and run.verified_attempt != run.attempt:
        print(f"  resume     from the checkpoint verified in attempt {run.verified_attempt}")
    if run.utilisation:
        print(f"  idle       {printable(run.utilisation)}")
    for attached in run.attachments:
        size = f", {attached.size} bytes" if attached.size is not None else ""
        print(f"  attached   {attached.kind}: {printable(attached.uri)}{size}")
        if attached.excerpt:
            for line in attached.excerpt.rstrip().splitlines()[-CRASH_LINES:]:
                print(f"             | {printable(line)}")
    for problem in run.report_problems:
        print(f"  not read   {printable(problem.note)}")
    print("  transitions:")
    for t in run.transitions:
        print(
            f"    {t.at:%Y-%m-%d %H:%M:%S}  {t.from_ or '-':>11} -> {t.to:<11} "
            f"{printable(t.reason)}"
        )
    for a in run.actions:
        error = f" {printable(a.error_code)}" if a.error_code else ""
        print(
            f"  action {a.action} at {a.at:%H:%M:%S}: {a.outcome} after {a.attempts} "
            f"attempt(s){error}"
        )


CRASH_LINES = 10  # the last lines of a crash report shown by `status RUN_ID`


def _print_rows(rows: Sequence[Sequence[str]]) -> None:
    """A table: cells escaped (`printable`), then padded to their column's width."""
    shown = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(shown[0]))]
    for row in shown:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _checkpoint_facts(run: RunDetail) -> str:
    """The verified bytes and the grace saved, from the transitions that recorded them."""
    from supervisor.core.run import Phase

    facts = []
    resumed = [i for i, t in enumerate(run.transitions) if t.to == Phase.RESUMING]
    current = run.transitions[resumed[-1] + 1 :] if resumed else run.transitions
    for t in current:  # this attempt's facts only
        if t.detail.get("bytes") is not None and "checkpoint verified" in t.reason:
            seconds = t.detail.get("verify_s")
            facts.append(
                f"{t.detail['files']} file(s), {t.detail['bytes']} bytes verified"
                + (f" in {seconds}s" if seconds is not None else "")
            )
        if t.detail.get("grace_saved_s") is not None:
            facts.append(f"grace ended early, {t.detail['grace_saved_s']:.0f}s saved")
    return f" ({'; '.join(facts)})" if facts else ""


def _tail_line(item: TailItem) -> str:
    if item.transition is not None:
        t = item.transition
        return f"{t.at:%Y-%m-%dT%H:%M:%S}Z  {t.from_ or '-'} -> {t.to}  {printable(t.reason)}"
    assert item.event is not None
    e = item.event
    fields = printable(" ".join(f"{k}={v}" for k, v in e.fields.items()))
    return f"{e.at:%Y-%m-%dT%H:%M:%S}Z  · {e.event} {fields}".rstrip()


def _print_zombies(found: ZombieList, *, as_json: bool) -> None:
    from supervisor.adapters.control import jsonable

    if as_json:
        print(json.dumps(jsonable(found), indent=2))
        return
    if found.auto_terminate:
        print(
            f"auto-terminate on: a zombie is terminated {duration(found.wait_s)} after it was "
            f"marked, attempts at least {duration(found.cooldown_s)} apart"
        )
    else:
        print("auto-terminate off: zombies are listed, never touched (SUPERVISOR_AUTO_TERMINATE)")
    if not found.zombies:
        print("no zombie instances")
        return
    rows = [("INSTANCE", "REGION", "RUN", "STATE", "AGE", "ATTEMPTS", "NEXT")]
    for z in found.zombies:
        if z.next_action is None:
            upcoming = "-"
        elif z.next_at is None:
            upcoming = f"{z.next_action} now"
        else:
            upcoming = f"{z.next_action} in {ago(z.next_at)}"
        rows.append(
            (
                z.instance_id,
                z.region,
                z.run_id or "-",
                z.state,
                duration(z.age_s),
                str(z.attempts),
                upcoming,
            )
        )
    shown = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(shown[0]))]
    print("  ".join(cell.ljust(w) for cell, w in zip(shown[0], widths, strict=True)).rstrip())
    for row, z in zip(shown[1:], found.zombies, strict=True):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        print(f"    {printable(z.reason)}")
        if z.last_error:
            print(f"    last attempt failed: {printable(z.last_error)}")


def _print_report(report: ReportView, *, days: float, as_json: bool) -> None:
    from supervisor.adapters.control import jsonable

    if as_json:
        print(json.dumps(jsonable(report), indent=2))
        return
    print(f"since {report.since:%Y-%m-%d %H:%M} UTC ({days:g} days)")
    if not report.days:
        print("zombie terminations: no attempts")
    else:
        rows = [
            ("DAY", "TERMINATED", "STOPPED", "ATTEMPTS", "SUCCESS", "MEAN TO TERMINATED", "FAILED")
        ]
        for d in report.days:
            rate = f"{d.success_rate:.0%}" if d.success_rate is not None else "-"
            mean = duration(d.mean_s_to_terminated) if d.mean_s_to_terminated is not None else "-"
            rows.append(
                (
                    d.day,
                    str(d.terminations),
                    str(d.stops),
                    str(d.attempts),
                    rate,
                    mean,
                    str(d.failed_attempts),
                )
            )
        _print_rows(rows)
    outcomes = ", ".join(f"{outcome} {n}" for outcome, n in report.runs_by_outcome.items())
    print(f"runs attached: {report.runs}" + (f" ({outcomes})" if outcomes else ""))
    crash = f"{report.crash_rate:.0%}" if report.crash_rate is not None else "- (no run ended)"
    print(f"crash rate: {crash}")
    print(f"open zombies: {report.open_zombies}")
    if report.idle_days:
        print("idle instance-seconds after the end (job's marker to our accepted stop)")
        idle_rows = [("DAY", "RUNS", "IDLE S", "MEAN S")]
        for idle in report.idle_days:
            per_run = idle.idle_s / idle.runs if idle.runs else 0.0
            idle_rows.append((idle.day, str(idle.runs), f"{idle.idle_s:.0f}", f"{per_run:.0f}"))
        _print_rows(idle_rows)


if __name__ == "__main__":
    sys.exit(main())
