"""How many CPUs this process may really use, and how much memory: what the default thread
layout and the decode memory budget are sized by.

The host's core count is the wrong answer in a container: a CPU set narrows it (visible in the
affinity mask), and a CPU quota (`docker --cpus`, a Kubernetes CPU limit) caps it without
narrowing the mask, so the quota is read from the cgroup too (v2 `cpu.max`, v1
`cpu.cfs_quota_us`). Sizing K by the host's 64 cores under a 2-CPU quota would split every load
into batches of one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's quota allows, or None when there is no quota (or no cgroup)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs in this process's affinity mask, capped by a cgroup quota (rounded up); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def total_memory_bytes(root: Path = CGROUP_ROOT) -> int:
    """Physical memory, capped by a cgroup memory limit (v2 `memory.max`, v1
    `memory.limit_in_bytes`): a container's, not the host's."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        total = 8 << 30
    for limit_file in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total
