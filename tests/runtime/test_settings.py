"""Settings: names, defaults, precedence, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.eta import without_eta
from supervisor.core.spec import MAX_GRACE_S
from supervisor.runtime.settings import Settings, unknown_variables
from tests.core.builders import make_spec


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "STATE_DIR",
        "POLL_INITIAL_S",
        "POLL_MAX_S",
        "GRACE_S",
        "RECONCILE_INTERVAL_S",
        "RETRY_BASE_S",
    ):
        monkeypatch.delenv(f"SUPERVISOR_{name}", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    s = Settings.load()
    assert (s.poll_initial_s, s.poll_max_s, s.grace_s) == (30, 300, 300)
    assert (s.reconcile_interval_s, s.retry_base_s) == (60, 2)
    assert s.state_dir == Path("/home/someone/.local/state/supervisor")
    assert s.socket_path.name == "supervisord.sock"


def test_xdg_state_home_moves_the_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/var/state")
    assert Settings.load().state_dir == Path("/var/state/supervisor")


def test_environment_variables_take_floats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_POLL_INITIAL_S", "0.25")
    monkeypatch.setenv("SUPERVISOR_RETRY_BASE_S", "0.01")
    s = Settings.load()
    assert (s.poll_initial_s, s.retry_base_s) == (0.25, 0.01)


def test_environment_overrides_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "s.toml"
    config.write_text("grace_s = 12\npoll_initial_s = 5\n")
    monkeypatch.setenv("SUPERVISOR_GRACE_S", "7")
    s = Settings.load(config)
    assert (s.grace_s, s.poll_initial_s) == (7, 5)


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_POLL_INITIAL_S", "soon")
    with pytest.raises(InvalidInput, match=r"SUPERVISOR_POLL_INITIAL_S.*'soon'"):
        Settings.load()


def test_a_negative_grace_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_GRACE_S", "-1")
    with pytest.raises(InvalidInput, match="SUPERVISOR_GRACE_S"):
        Settings.load()


def test_poll_max_below_initial_is_refused_without_echoing_other_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPERVISOR_POLL_INITIAL_S", "60")
    monkeypatch.setenv("SUPERVISOR_POLL_MAX_S", "10")
    with pytest.raises(InvalidInput, match="poll_max_s") as caught:
        Settings.load()
    assert "{" not in str(caught.value)  # no dump of every input


def test_an_unknown_key_in_the_config_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text("pol_initial_s = 5\n")
    with pytest.raises(InvalidInput, match="unknown setting 'pol_initial_s'"):
        Settings.load(config)


def test_a_missing_or_broken_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        Settings.load(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("grace_s = = 3")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        Settings.load(broken)


EXAMPLE = Path(__file__).parents[2] / "config" / "supervisord.example.toml"
ILLUSTRATED = {"state_dir", "events_queue_url", "metrics_addr", "database_url", "replica_id",
               "notify_urls", "public_url"}  # fmt: skip
"""Keys the example shows with a sample value, as its comments say, not the default."""
ILLUSTRATED |= {"http_addr", "http_token"}  # issue 15: the dashboard's listener


def test_the_example_config_shows_valid_values_that_are_the_defaults(tmp_path: Path) -> None:
    """Uncommented, every `# key = value` line loads, and shows the default it claims to."""
    lines = [line.removeprefix("# ") for line in EXAMPLE.read_text(encoding="utf-8").splitlines()]
    shown = {
        key: line
        for line in lines
        if (key := line.split(" = ", 1)[0]) in Settings.model_fields and " = " in line
    }
    uncommented = tmp_path / "example.toml"
    uncommented.write_text("\n".join(shown.values()) + "\n", encoding="utf-8")

    loaded, defaults = Settings.load(uncommented), Settings.load()

    differ = [
        name
        for name in shown
        if name not in ILLUSTRATED and getattr(loaded, name) != getattr(defaults, name)
    ]
    assert differ == [], f"config/supervisord.example.toml shows non-default values for {differ}"
    assert str(loaded.state_dir) != str(defaults.state_dir)  # the sample value was read


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("metrics.internal:80", ("metrics.internal", 80)),
    ],
)
def test_the_metrics_address_defaults_its_host_to_loopback(
    monkeypatch: pytest.MonkeyPatch, text: str, address: tuple[str, int]
) -> None:
    monkeypatch.setenv("SUPERVISOR_METRICS_ADDR", text)
    assert Settings.load().metrics_address == address


def test_without_a_metrics_address_there_is_no_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_METRICS_ADDR", raising=False)
    assert Settings.load().metrics_address is None


@pytest.mark.parametrize("text", ["metrics", "127.0.0.1:", "127.0.0.1:65536", "::1:9464"])
def test_a_bad_metrics_address_is_named_with_the_forms_it_takes(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("SUPERVISOR_METRICS_ADDR", text)
    with pytest.raises(InvalidInput) as caught:
        Settings.load()
    message = str(caught.value)
    assert message.startswith("bad setting SUPERVISOR_METRICS_ADDR: expected HOST:PORT")
    assert f"(got {text!r})" in message


def test_the_example_config_names_every_setting() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    testing_only = {"faults"}  # a fault plan for the soak and the tests, not for users
    missing = [
        name
        for name in Settings.model_fields
        if f"# {name} =" not in text and name not in testing_only
    ]
    assert missing == [], f"config/supervisord.example.toml does not show {missing}"


def test_with_an_events_queue_the_check_backs_off_further(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SUPERVISOR_EVENTS_QUEUE_URL", raising=False)
    assert Settings.load(poll_max_s=300).poll_policy.max_s == 300
    with_events = Settings.load(
        poll_max_s=300, poll_max_with_events_s=1800, events_queue_url="https://sqs/q"
    )
    assert with_events.poll_policy.max_s == 1800
    assert with_events.poll_policy.initial_s == with_events.poll_initial_s


def test_the_events_backoff_cap_may_not_undercut_the_first_check() -> None:
    with pytest.raises(InvalidInput, match=r"poll_max_with_events_s \(5.0\) must be at least"):
        Settings.load(poll_initial_s=30, poll_max_with_events_s=5, events_queue_url="https://q")
    # Without a queue the cap is not used, so it is not held against the first check.
    assert Settings.load(poll_initial_s=30, poll_max_with_events_s=5).poll_policy.max_s == 300


def test_a_run_without_an_eta_is_checked_up_to_its_own_cap_without_an_events_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SUPERVISOR_EVENTS_QUEUE_URL", raising=False)
    assert Settings.load().poll_max_without_eta == 100
    assert Settings.load(poll_max_without_eta_s=90).poll_max_without_eta == 90
    # With a queue, S3 notifications find a job's end: every run backs off as far.
    assert Settings.load(events_queue_url="https://sqs/q").poll_max_without_eta is None
    # A slower schedule set without it is taken as it is: the cap is kept within the two.
    slow = Settings.load(poll_initial_s=3600, poll_max_s=3600)
    assert slow.poll_max_without_eta == 100
    assert without_eta(slow.poll_policy, slow.poll_max_without_eta).max_s == 3600


@pytest.mark.parametrize("wait", [0, 21])
def test_the_sqs_wait_is_within_what_aws_allows(wait: int) -> None:
    with pytest.raises(InvalidInput, match="SUPERVISOR_EVENTS_WAIT_S"):
        Settings.load(events_wait_s=wait)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRACE_S", "inf"),
        ("GRACE_S", "nan"),
        ("GRACE_S", "1000000"),  # over a run's limit: every attach would then be refused
        ("POLL_INITIAL_S", "nan"),
        ("ZOMBIE_WAIT_S", "1e400"),
        ("RECONCILE_INTERVAL_S", "1e12"),
    ],
)
def test_a_setting_out_of_a_runs_bounds_or_not_finite_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"SUPERVISOR_{name}", value)
    with pytest.raises(InvalidInput, match=f"SUPERVISOR_{name}") as caught:
        Settings.load()
    assert "\n" not in str(caught.value)


def test_the_largest_grace_the_daemon_takes_is_one_every_run_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPERVISOR_GRACE_S", str(MAX_GRACE_S))
    assert make_spec(grace_s=Settings.load().grace_s).grace_s == MAX_GRACE_S


def test_an_unknown_supervisor_variable_is_warned_about_with_the_likely_one() -> None:
    environ = {
        "SUPERVISOR_GRACE": "10",
        "SUPERVISOR_STAT_DIR": "/x",
        "SUPERVISOR_GRACE_S": "10",
        "SUPERVISOR_RUN_PREFIX": "s3://b/p/",
        "SUPERVISOR_WHATEVER_ELSE": "1",
        "HOME": "/root",
    }
    assert unknown_variables(environ) == [
        "warning: ignoring unknown variable SUPERVISOR_GRACE: did you mean SUPERVISOR_GRACE_S?",
        "warning: ignoring unknown variable SUPERVISOR_STAT_DIR: did you mean "
        "SUPERVISOR_STATE_DIR?",
        "warning: ignoring unknown variable SUPERVISOR_WHATEVER_ELSE: no setting has this name",
    ]


# -- issue 14: the database -----------------------------------------------------------------------


def test_without_a_database_url_the_run_database_is_the_state_directorys_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SUPERVISOR_DATABASE_URL", raising=False)
    settings = Settings.load(state_dir=tmp_path)
    assert settings.database_url is None
    assert settings.database_shown == str(tmp_path / "supervisor.db")


def test_a_database_url_is_kept_and_shown_and_represented_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://sv:s3cr3t-pw@db.internal:5432/supervisor?sslmode=require"
    monkeypatch.setenv("SUPERVISOR_DATABASE_URL", f"  {url} ")
    settings = Settings.load()
    assert settings.database_url == url  # libpq gets it whole
    assert settings.database_shown == (
        "postgresql://sv:***@db.internal:5432/supervisor?sslmode=require"
    )
    assert "s3cr3t-pw" not in repr(settings) and "s3cr3t-pw" not in str(settings)


def test_a_database_url_that_is_no_postgresql_url_is_refused_without_showing_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPERVISOR_DATABASE_URL", "mysql://sv:s3cr3t-pw@db/supervisor")
    with pytest.raises(InvalidInput) as raised:
        Settings.load()
    message = str(raised.value)
    assert message.startswith("bad setting SUPERVISOR_DATABASE_URL: expected a PostgreSQL URL")
    assert "mysql://sv:***@db/supervisor" in message and "s3cr3t-pw" not in message
