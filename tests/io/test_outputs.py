"""Output names that tell runs apart, and the settings an output's mark records (no imaging, no models)."""

from __future__ import annotations

import pytest

from flowsr_cli.io.outputs import settings_suffix
from flowsr_cli.io.provenance import RunSettings, mark_json, parse_mark


@pytest.mark.parametrize(
    ("run", "suffix"),
    [
        (RunSettings("linf-lp", None, "x2"), ""),
        (RunSettings("linf-lp", None, "x2", prior="learned", temperature=0.5, seed=0), ""),
        (RunSettings("linf", None, "x4", temperature=0.0), "_linf_t0"),
        (RunSettings("linf", None, "x4", temperature=0.8, seed=7), "_linf_t0.8_seed7"),
        (RunSettings("linf-lp", None, "w100", prior="gaussian", temperature=1.25), "_gaussian_t1.25"),
        (RunSettings("runs/prior/model.safetensors", None, "x2"), "_model"),
        (RunSettings("~/My Models/v2 (best).SafeTensors", None, "x2"), "_v2-best"),
        (RunSettings("/m/" + "x" * 300 + ".safetensors", None, "x2"), "_" + "x" * 40),
        (RunSettings("{}.safetensors", None, "x2"), "_model"),
    ],
)
def test_default_names_carry_the_settings_that_differ_from_the_defaults(run: RunSettings, suffix: str) -> None:
    assert settings_suffix(run, "linf-lp") == suffix
    assert "{" not in suffix and "}" not in suffix and "/" not in suffix, "the suffix is a name template"


def test_a_mark_round_trips_and_compares_settings() -> None:
    run = RunSettings("linf", "ab" * 32, "x2", temperature=0.8, seed=7)
    recorded = parse_mark(mark_json(run.mark(sample=1)))
    assert recorded is not None
    assert run.differences(recorded, sample=1) == []
    assert run.differences(recorded, sample=2) == ["sample 1, not 2"]
    other = RunSettings("linf-lp", None, "x2")
    assert other.differences(recorded) == [
        "model linf, not linf-lp",
        "temperature 0.8, not 0.5",
        "seed 7, not 0",
        "sample 1, not (default)",
    ]


def test_model_files_are_compared_by_sha256_when_both_are_known() -> None:
    recorded = RunSettings("./a/m.safetensors", "ab" * 32, "x2").mark()
    assert RunSettings("/elsewhere/m.safetensors", "ab" * 32, "x2").differences(recorded) == []
    changed = RunSettings("./a/m.safetensors", "cd" * 32, "x2").differences(recorded)
    assert changed == ["model file changed (sha256 abababababab…, now cdcdcdcdcdcd…)"]
    assert RunSettings("./a/m.safetensors", None, "x2").differences(recorded) == []


def test_a_mark_without_settings_or_with_unknown_ones() -> None:
    run = RunSettings("linf", None, "x2")
    assert run.differences({"flowsr": "0.1.0"}) is None, "an earlier flowsr recorded no settings"
    assert run.differences({"flowsr": "0.1.0", "model": "linf", "colour": "red"}) == [], "unrecorded: the same"
    hostile = {"flowsr": "9", "model": "x" * 10_000, "temperature": [[[]]]}
    assert run.differences(hostile) == [f"model {'x' * 39}…, not linf", "temperature [[[]]], not 0.5"]
