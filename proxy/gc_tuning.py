"""The cyclic garbage collector's settings for a serving process: measured, kept apart.

- ``gc.freeze()`` once the server listens: everything alive then lives as long as the server,
  so the collector's full scans stop walking it; they paused the loop for milliseconds (p99 of
  small requests went from ~35 to ~13 ms, issue 11).
- A young-generation threshold of 10,000 net allocations (Python's default: 700): almost
  everything a request allocates is freed by reference counting, and at 700 a 32-connection
  load ran a young scan every ~18 requests, 3-5 % of the proxy's CPU (issue 11). It needs the
  request path to make no reference cycles, or the cycles of failed requests live long enough
  to add up (37.8 and 49.2 MiB of growth in the 60 s soak before the last ones were broken,
  2026-12-05); tests/integration/test_reference_cycles.py keeps it so.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def tune_for_serving() -> None:
    """Freeze what is alive now and collect the young generation less often."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
