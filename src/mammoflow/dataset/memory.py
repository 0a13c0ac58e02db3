"""Decoded examples kept in memory from one epoch to the next, when they fit.

Every epoch of :mod:`mammoflow.dataset.pipeline` used to read, parse and (whole images) resize every shard again;
the work before augmentation is the same each time. The first epoch now keeps those un-augmented examples in a
process-wide cache, bounded in bytes, and later epochs (and later datasets over the same files, e.g. validation
each epoch) read them from memory. Augmentation stays after the cache, still a pure function of seed and epoch:
the cached path yields exactly the batches the streaming path yields (the tests compare them).

This module holds the cache itself (what is kept, under which key, how much); :mod:`mammoflow.dataset.cached`
reads the examples into it and serves the datasets from it, and the pipeline decides what goes in.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# At most this share of the memory available when the cache is first filled, and never more than HARD_LIMIT:
# one tf.data graph holds the cached tensors, and a graph cannot be serialised past 2 GB.
AVAILABLE_SHARE = 0.25
HARD_LIMIT = 1536 << 20


def budget_bytes(limit_mb: int | None) -> int:
    """The cache's size limit: ``limit_mb`` MiB when given (0 turns the cache off), else a quarter of the memory
    available now, capped at :data:`HARD_LIMIT`."""
    if limit_mb is not None:
        return min(max(int(limit_mb), 0) << 20, HARD_LIMIT)
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # no psutil, or no /proc: be modest
        available = 2 << 30
    return min(int(available * AVAILABLE_SHARE), HARD_LIMIT)


def files_key(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """Which files, and which version of each: path, size and modification time (a rewritten shard misses)."""
    key = []
    for p in sorted(set(str(p) for p in paths)):
        st = os.stat(p)
        key.append((p, st.st_size, st.st_mtime_ns))
    return tuple(key)


class MemoryCache:
    """A least-recently-used map whose values are charged their size in bytes against one budget."""

    def __init__(self) -> None:
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: Any, value: Any, nbytes: int, budget: int) -> bool:
        """Keep ``value`` (evicting the least recently used entries to make room); ``False`` if it can never fit."""
        if nbytes > budget:
            return False
        with self._lock:
            self._items.pop(key, None)
            while self._items and self.nbytes + nbytes > budget:
                old, (_, size) = self._items.popitem(last=False)
                log.debug("memory cache: evicted %d bytes", size)
            self._items[key] = (value, nbytes)
        return True

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
