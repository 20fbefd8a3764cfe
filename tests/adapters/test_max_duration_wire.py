"""max_duration on the wire: a number of seconds (TOML, JSON, the Python client) or a text
with a unit (the flag, TOML); the run spec turns both into seconds."""

from __future__ import annotations

import pytest

from supervisor.adapters.control_views import attach_order
from supervisor.adapters.protocol import AttachRequest
from supervisor.core.errors import InvalidInput
from supervisor.core.spec import RunSpec
from tests.core.builders import INSTANCE, SPEC_FIELDS

REQUIRED = {"run_id": "r1", "instance_id": INSTANCE, "s3_prefix": "s3://my-runs/r1/"}


@pytest.mark.parametrize(("given", "seconds"), [(7200, 7200.0), ("2h", 7200.0), (90.5, 90.5)])
def test_a_max_duration_is_seconds_or_text_on_the_wire(given: object, seconds: float) -> None:
    order = attach_order(AttachRequest(**REQUIRED, max_duration=given))
    spec = RunSpec.build(**{**SPEC_FIELDS, **order.fields})
    assert spec.max_duration == seconds
    # stored as seconds, and read back as the same spec
    assert RunSpec.from_stored(spec.model_dump_json()) == spec


def test_a_bad_max_duration_from_the_wire_is_refused_by_the_spec_naming_it() -> None:
    order = attach_order(AttachRequest(**REQUIRED, max_duration="soon"))
    with pytest.raises(InvalidInput, match=r"max_duration 'soon': give seconds"):
        RunSpec.build(**{**SPEC_FIELDS, **order.fields})
