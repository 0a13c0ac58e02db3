"""What this process may use of the machine (or of its pod): CPUs."""

from __future__ import annotations

import os
from pathlib import Path


def available_cpus(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: the container's CPU limit (cgroup v2 ``cpu.max`` or v1 CFS quota), else the
    CPUs it may run on. ``os.cpu_count()`` gives the node's count, which would start a Ray with far more trial
    slots than the pod's limit allows."""
    import math

    root = Path(cgroup_root)
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = period = None
    try:
        if (root / "cpu.max").is_file():
            q, p = (root / "cpu.max").read_text().split()[:2]
            quota, period = (None if q == "max" else int(q)), int(p)
        elif (root / "cpu" / "cpu.cfs_quota_us").is_file():
            q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            quota = q if q > 0 else None
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        quota = None
    if quota is not None and period:
        count = min(count, max(1, math.ceil(quota / period)))
    return count
