"""CI's soak: ``bench/soak.py`` for 60 s (mixed traffic, 2 s tokens, random revocations).

It fails on any failed request that should have succeeded, any corrupted body, RSS growth over
20 MiB after warm-up, or fds or spool files above baseline at the end; the 15-minute run is
``bench/soak.py --duration 900`` (figures in docs/reliability.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DURATION = 60


@pytest.mark.timeout(DURATION + 240)
def test_soak_60_seconds_of_mixed_traffic_with_revocations(tmp_path: Path) -> None:
    result_file = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", str(DURATION),
         "--warmup", "20", "--json", str(result_file)],
        capture_output=True, text=True, timeout=DURATION + 200, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["problems"] == []
    assert result["counts"]["upload"] > 0 and result["counts"]["download"] > 0
    assert result["counts"]["revocations"] >= 5
    assert result["spool_files_end"] == 0
