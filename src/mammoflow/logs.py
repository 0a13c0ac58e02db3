"""Logging set-up and progress bars for long loops."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def setup_logging(level: str | int = "INFO") -> None:
    """Configure the root logger once (idempotent): time, level, module, message on stderr.

    Python warnings go through logging too (logger ``py.warnings``), so each is printed once, in the same
    format. pydicom already logs every warning it issues (to the ``pydicom`` logger): its copies through
    :mod:`warnings` are dropped here, or each would be printed twice.
    """
    root = logging.getLogger()
    if getattr(root, "_mammoflow_configured", False):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    root._mammoflow_configured = True  # type: ignore[attr-defined]


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar on stderr, silent when not attached to a terminal or in CI."""
    from tqdm.auto import tqdm

    disable = os.environ.get("CI") == "true" or not sys.stderr.isatty()
    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=disable, leave=False)


def setup_step_logging() -> None:
    """Log at ``$MAMMOFLOW_LOG_LEVEL`` (default INFO) in a pipeline step. KFP's executor installs a root handler
    first; then only the level is set, so that every line is printed once."""
    level = os.environ.get("MAMMOFLOW_LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    if root.handlers:
        root.setLevel(level)
    else:
        setup_logging(level)
