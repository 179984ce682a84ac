"""The CI smoke benchmark: the proxy's instructions per request stay within 15 % of the figure
committed in bench/results/instructions-baseline.json (issue 11).

Wall time on a shared machine swings by tens of percent; callgrind's instruction count for the
same requests repeats to about 1 %, so a growth past 15 % is real per-request work. About 30 s
(the proxy starts under valgrind). valgrind and wrk come from Debian; ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from instructions import BASELINE, within  # noqa: E402 (bench/ is not a package)

TOOLS = ("valgrind", "callgrind_control", "wrk")


def test_the_check_fails_past_15_percent_over_the_committed_figure() -> None:
    assert within(1_150_000, 1_000_000)
    assert not within(1_150_001, 1_000_000)
    assert within(600_000, 1_000_000)  # getting cheaper never fails


@pytest.mark.bench
@pytest.mark.timeout(300)
def test_instructions_per_request_within_15_percent_of_committed_figure() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install -y valgrind wrk)"
        if os.environ.get("CI"):
            pytest.fail(message + ": .ci/run installs them")
        pytest.skip(message)
    assert BASELINE.is_file(), f"{BASELINE} is not committed"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instructions.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
