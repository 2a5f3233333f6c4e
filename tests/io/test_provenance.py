"""The consistency an output's mark records, and how a rerun compares it (no imaging, no models)."""

from __future__ import annotations

from flowsr_cli.io.provenance import RunSettings, mark_json, parse_mark


def test_the_mark_records_the_resolved_consistency() -> None:
    run = RunSettings("linf-lp", None, "x2", consistency="on")
    recorded = parse_mark(mark_json(run.mark()))
    assert recorded is not None and recorded["consistency"] == "on"
    assert run.differences(recorded) == []
    off = RunSettings("linf-lp", None, "x2", consistency="off")
    assert off.differences(recorded) == ["consistency on, not off"]


def test_a_mark_from_before_consistency_was_recorded_is_unprojected() -> None:
    """No flowsr before the consistency setting projected its outputs: their marks mean ``off``."""
    earlier = {"flowsr": "0.1.0", "model": "linf-lp", "size": "x2", "temperature": 0.5, "seed": 0, "sample": None}
    assert RunSettings("linf-lp", None, "x2", consistency="on").differences(earlier) == ["consistency off, not on"]
    assert RunSettings("linf-lp", None, "x2", consistency="off").differences(earlier) == []


def test_an_unresolved_consistency_is_not_compared() -> None:
    """``auto`` for a model whose file is not here yet: the mark's consistency is not held against the run."""
    recorded = RunSettings("mine", "ab" * 32, "x2", consistency="off").mark()
    assert RunSettings("mine", "ab" * 32, "x2").differences(recorded) == []
    assert RunSettings("mine", "ab" * 32, "x4").differences(recorded) == ["size x2, not x4"]
