"""CPU count for the default thread layout: affinity mask capped by a cgroup quota."""

import os
from pathlib import Path

import pytest

from photofield_ai.runtime.cpus import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def v2(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    root = v2(tmp_path, "150000 100000\n")
    assert cgroup_cpu_quota(root) == 1.5
    assert usable_cpus(root) == min(AFFINITY or 1, 2)  # 1.5 CPUs: two threads can run


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root = v1(tmp_path, 50000, 100000)
    assert cgroup_cpu_quota(root) == 0.5
    assert usable_cpus(root) == 1


@pytest.mark.parametrize("make", [lambda p: v2(p, "max 100000\n"), lambda p: v1(p, -1, 100000)])
def test_no_quota_leaves_the_affinity_mask(tmp_path: Path, make: object) -> None:
    root = make(tmp_path)  # type: ignore[operator]
    assert cgroup_cpu_quota(root) is None
    assert usable_cpus(root) == AFFINITY


def test_no_cgroup_files(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == AFFINITY


def test_garbage_is_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(v2(tmp_path, "lots\n")) is None
