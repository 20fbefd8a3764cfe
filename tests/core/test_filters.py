"""Field paths, `--where` filters, `--since` durations and run queries, parsed from text."""

from __future__ import annotations

from datetime import timedelta

import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.filters import (
    COLUMNS,
    FieldPath,
    Filter,
    Op,
    RunQuery,
    Source,
    parse_field,
    parse_filter,
    parse_since,
)
from supervisor.core.run import Phase
from tests.core.builders import NOW

C, M, T, COL = Source.CONFIG, Source.METRICS, Source.TAG, Source.COLUMN


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("config.gradient_method", FieldPath(C, ("gradient_method",))),
        ("config.optimizer.lr", FieldPath(C, ("optimizer", "lr"))),
        ("config.model.layers.0", FieldPath(C, ("model", "layers", "0"))),
        ("metrics.val_loss", FieldPath(M, ("val_loss",))),
        ("metrics.eval/top-1.acc", FieldPath(M, ("eval/top-1.acc",))),  # a name, not nested
        ("tag.method", FieldPath(T, ("method",))),
        ("tag.team.name", FieldPath(T, ("team.name",))),
        ("  phase ", FieldPath(COL, ("phase",))),
        ("created_at", FieldPath(COL, ("created_at",))),
    ],
)
def test_a_field_path_names_its_source_and_keys(text: str, field: FieldPath) -> None:
    assert parse_field(text) == field


def test_a_field_path_prints_as_written() -> None:
    for text in ("config.optimizer.lr", "metrics.val_loss", "tag.method", "phase"):
        assert str(parse_field(text)) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("foo", "unknown field 'foo': use config.KEY"),
        ("metric.val_loss", "unknown field 'metric.val_loss'"),
        ("config.", "field 'config.' names no key: give config.KEY"),
        ("metrics.", "field 'metrics.' names no key: give metrics.NAME"),
        ("config.a..b", "field 'config.a..b': a config key is empty"),
        ('tag.a"b', "field 'tag.a\"b': 'a\"b' is not a valid name"),
    ],
)
def test_a_bad_field_path_is_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_field(text)
    assert says in str(caught.value)


def test_the_unknown_field_message_lists_every_column() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_field("nope")
    assert all(column in str(caught.value) for column in COLUMNS)


@pytest.mark.parametrize(
    ("text", "op", "value"),
    [
        ("metrics.val_loss<0.3", Op.LT, 0.3),
        ("metrics.val_loss <= 0.3", Op.LE, 0.3),
        ("metrics.acc>.9", Op.GT, 0.9),
        ("metrics.acc>=1e-3", Op.GE, 0.001),
        ("config.gradient_method=mgda", Op.EQ, "mgda"),
        ("config.gradient_method==mgda", Op.EQ, "mgda"),
        ("config.gradient_method!=mgda", Op.NE, "mgda"),
        ("config.seed=-7", Op.EQ, -7.0),
        ('tag.seed="7"', Op.EQ, "7"),  # quoted: text
        ("tag.seed='7'", Op.EQ, "7"),
        ('tag.note=""', Op.EQ, ""),
        ("tag.expr=a=b", Op.EQ, "a=b"),  # the first operator splits
        ("config.x=nan", Op.EQ, "nan"),  # not a finite number: text
        ("created_at>=2026-11-01", Op.GE, "2026-11-01"),
    ],
)
def test_a_filter_is_path_op_value_numeric_when_the_value_reads_as_a_number(
    text: str, op: Op, value: float | str
) -> None:
    parsed = parse_filter(text)
    assert (parsed.op, parsed.value) == (op, value)
    assert parsed.numeric is isinstance(value, float)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("metrics.val_loss", "filter 'metrics.val_loss' has no operator: give PATH OP VALUE"),
        ("=3", "filter '=3' names no field before '='"),
        ("config.x=", "filter 'config.x=' has no value"),
        ("metrics.val_loss<<3", "the value '<3' starts with an operator character"),
        ("metrics.val_loss=<3", "the value '<3' starts with an operator character"),
        ("bogus<3", "filter 'bogus<3': unknown field 'bogus'"),
    ],
)
def test_a_bad_filter_is_refused_naming_it(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_filter(text)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("2w", timedelta(weeks=2)),
        ("1.5d", timedelta(hours=36)),
        (" 3 h ", timedelta(hours=3)),
        ("7", timedelta(days=7)),  # a bare number is days, as `report --since 7` always took
        ("0.5", timedelta(hours=12)),
        (str(1 / 86400), timedelta(seconds=1)),  # days as str() writes a small float
    ],
)
def test_since_is_a_number_and_a_unit(text: str, delta: timedelta) -> None:
    assert parse_since(text) == delta


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("7y", "since '7y' is not a duration: give a number and a unit"),
        ("nan", "since 'nan' is not a duration"),
        ("inf", "since 'inf' is not a duration"),
        ("1e400d", "since '1e400d' is out of range"),
        ("-1d", "since '-1d' is not a duration"),
        ("0d", "since '0d' is out of range"),
        ("99999d", "since '99999d' is out of range"),
    ],
)
def test_a_bad_since_is_refused_with_examples(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_since(text)
    assert says in str(caught.value)
    assert "7d" in str(caught.value)


def test_a_query_is_built_from_text_with_since_counted_back_from_now() -> None:
    query = RunQuery.build(
        ["metrics.val_loss<0.3", parse_filter("tag.method=mgda")],
        phase="stopped",
        outcome=["completed", "none"],
        since="2d",
        now=NOW,
    )
    assert query == RunQuery(
        where=(
            Filter(FieldPath(M, ("val_loss",)), Op.LT, 0.3),
            Filter(FieldPath(T, ("method",)), Op.EQ, "mgda"),
        ),
        phases=(Phase.STOPPED,),
        outcomes=("completed", "none"),
        created_after=NOW - timedelta(days=2),
    )


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"phase": "runing"}, "unknown phase 'runing': give one of pending, running"),
        ({"outcome": "success"}, "unknown outcome 'success': give one of completed"),
        ({"since": "week"}, "since 'week' is not a duration"),
    ],
)
def test_a_query_refuses_an_unknown_phase_outcome_or_since(
    fields: dict[str, str], says: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        RunQuery.build(now=NOW, **fields)
    assert says in str(caught.value)
