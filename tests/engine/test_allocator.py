"""The allocator setting: freed large blocks come back without page faults, returning them hands them to the OS,
the user's own malloc settings win, and loading an upscaler or a rescaler applies it. Each case runs in a fresh
process (the setting is per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings: Linux only")

FAULTS_PROGRAM = """
import json, resource, sys
import torch
from flowsr_cli.config import Settings
from flowsr_cli.engine.allocator import reuse_freed_memory
from flowsr_cli.families.rescalers import load_rescaler, prepare_rescaler
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.hub.catalog import Hub

setup = sys.argv[1]
tuned = None
if setup == "tune":
    tuned = reuse_freed_memory()
elif setup == "upscaler":
    create_upscaler(UpscalerRequest("bicubic", device="cpu", hub=Hub(Settings())))
elif setup == "rescaler":
    load_rescaler(prepare_rescaler("hcflow-rescale-x2", Hub(Settings())), torch.device("cpu"), "auto", "auto", [])
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(48 << 18).fill_(1)  # 48 MiB of float32, written and freed: a band's or a plane's temporaries
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "faults": faults}))
"""
BLOCK_PAGES = (48 << 20) // 4096
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")


def _run(program: str, *arguments: str, **settings: str) -> dict[str, object]:
    """``program``'s JSON line, run in a fresh Python without the user's malloc settings but with ``settings``."""
    environment = {key: value for key, value in os.environ.items() if key not in USER_SETTINGS}
    result = subprocess.run(
        [sys.executable, "-c", program, *arguments],
        capture_output=True,
        text=True,
        check=True,
        env={**environment, **settings},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _reused(faults: list[int]) -> bool:
    """Whether the last blocks came back already mapped (each fresh one faults in all its pages)."""
    return sum(faults[-4:]) < BLOCK_PAGES


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    default = _run(FAULTS_PROGRAM, "default")
    tuned = _run(FAULTS_PROGRAM, "tune")
    assert all(faults >= BLOCK_PAGES for faults in default["faults"])
    assert tuned["tuned"] is True
    assert _reused(tuned["faults"])


RETURN_PROGRAM = """
import json, os
import torch
from flowsr_cli.engine.allocator import return_freed_memory, reuse_freed_memory

def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

reuse_freed_memory()
before_it = torch.ones(16 << 18)
freed = torch.ones(48 << 18)
after_it = torch.ones(16 << 18)  # so the freed block is a hole in the heap, not its top (which glibc trims anyway)
del freed
before = resident()
return_freed_memory()
print(json.dumps({"returned": before - resident()}))
"""


def test_returning_freed_memory_hands_the_kept_blocks_back() -> None:
    assert _run(RETURN_PROGRAM)["returned"] >= 40 << 20  # most of the 48 MiB hole, which the heap kept until then


@pytest.mark.parametrize("setting", USER_SETTINGS)
def test_users_own_malloc_settings_are_left_alone(setting: str) -> None:
    result = _run(FAULTS_PROGRAM, "tune", **{setting: "" if setting == "LD_PRELOAD" else "1048576"})
    assert result["tuned"] is False


@pytest.mark.parametrize("setup", ["upscaler", "rescaler"])
def test_loading_an_upscaler_or_a_rescaler_applies_the_setting(setup: str) -> None:
    assert _reused(_run(FAULTS_PROGRAM, setup)["faults"])
