"""What this test process holds open, from /proc/self/fd (Linux): leaks show up here."""

from __future__ import annotations

import os


def open_fd_targets() -> list[str]:
    """Where each open file descriptor of this process points (a path, ``socket:[inode]``...)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed since listed (the listing's own descriptor, for one)
            continue
    return targets
