"""Keep identifiers out of messages: header values, real paths, and what third-party readers print.

The image readers (:mod:`mammoflow.io.dicom`, :mod:`mammoflow.io.images`) send every text that does not come
from mammoflow itself — pydicom's warnings and log records, a decoder's exception, a traceback — through a
:class:`Redactor` before it reaches an error or a log line:

- the real path of the file, as given, absolute or resolved, becomes its label (the record id or the name the
  caller shows, a pseudonym under ``--pseudonymise-paths``); each folder above it, as a path or as a name,
  becomes ``<folder>``: the folder names of a site's export may hold patient names;
- a quoted value (``'...'``, ``"..."``, ``b'...'``) becomes ``<value>``: pydicom and Python quote the value they
  reject (``Invalid value for VR CS: 'DOE^JANE'``), and a damaged header may hold anything. A quoted name that
  follows a tag (``(0028,0004) 'Photometric Interpretation'``) is an attribute's name and is kept.

:func:`pydicom_warnings` captures pydicom's output while a file is read; :func:`unexpected_error` turns an
error nobody foresaw into the ``unexpected`` :class:`~mammoflow.errors.InputError`.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from mammoflow.errors import InputError

log = logging.getLogger(__name__)

# A quoted value (Python's repr: '...' or "..." with backslash escapes, maybe bytes), unless it follows a tag
# "(gggg,eeee) " (then it is the attribute's name). An apostrophe inside a word ("hasn't") opens nothing.
_QUOTED = re.compile(r"""(?<!\) )(?<!\w)(?:b?'(?:[^'\\\n]|\\.)*'(?!\w)|b?"(?:[^"\\\n]|\\.)*")""")
# Characters that may surround a path component inside a message.
_BEFORE = r"""(?<![^\s/\\'"(\[<=:,])"""
_AFTER = r"""(?![^\s/\\'")\]>,:;.])"""


def scrub_values(text: str) -> str:
    """``text`` with every quoted value replaced by ``<value>`` (see the module docstring)."""
    return _QUOTED.sub("<value>", text)


class Redactor:
    """Callable ``text -> text`` that hides the real paths of one file and quoted values (module docstring).

    ``paths`` are the file's real paths (a path, the shown path when that is a real one too); ``label`` is what
    replaces the file's path and name. The patterns are built on first use: most reads have nothing to redact.
    """

    def __init__(self, paths: Iterable[object], label: str):
        self.paths = [str(p) for p in paths if isinstance(p, (str, Path)) and str(p)]
        self.label = label

    @cached_property
    def _patterns(self) -> list[tuple[re.Pattern[str], str]]:
        files: set[str] = set()
        for given in self.paths:
            files.add(given)
            try:
                files.update((os.path.abspath(given), os.path.realpath(given)))
            except (OSError, ValueError):  # a NUL byte, a path the system cannot resolve
                pass
        folders: set[str] = set()
        names: dict[str, str] = {}
        for file in files:
            path = Path(file)
            folders.update(str(p) for p in path.parents if str(p) not in (".", "/", "", path.anchor))
            names.update({part: "<folder>" for part in path.parts[:-1] if part not in ("/", ".", "..", path.anchor)})
        for file in files:
            if Path(file).name and Path(file).name != self.label:
                names[Path(file).name] = self.label
        patterns = [(re.compile(re.escape(p)), self.label) for p in sorted(files, key=len, reverse=True)]
        patterns += [(re.compile(re.escape(p) + _AFTER), "<folder>") for p in sorted(folders, key=len, reverse=True)]
        patterns += [(re.compile(_BEFORE + re.escape(n) + _AFTER), r) for n, r in
                     sorted(names.items(), key=lambda kv: len(kv[0]), reverse=True)]
        return patterns

    def __call__(self, text: str) -> str:
        if self.paths:
            for pattern, replacement in self._patterns:
                text = pattern.sub(lambda _match, r=replacement: r, text)
        return scrub_values(text)


def redactor(src: object, shown_path: object | None, log_as: str | None) -> Redactor:
    """The :class:`Redactor` of one read: the label is ``log_as``, else the shown path's file name."""
    shown = str(shown_path) if shown_path is not None else str(src) if isinstance(src, (str, Path)) else ""
    label = log_as or Path(shown).name or "<stream>"
    return Redactor([src, shown_path], label)


class _Collect(logging.Handler):
    """Takes the records of the ``pydicom`` logger tree while it does not propagate: warnings and errors are kept
    (redacted and reported once by the caller); anything lower is withheld (and counted): pydicom's debug output
    is a byte dump of the header, identifiers included."""

    def __init__(self, into: list[str]):
        super().__init__(logging.DEBUG)
        self.into = into
        self.withheld = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            self.withheld += 1
            return
        try:
            self.into.append(record.getMessage())
        except Exception:  # a malformed format string in a third-party message
            self.into.append(str(record.msg))


def _pydicom_loggers() -> list[logging.Logger]:
    """The ``pydicom`` logger and its children that have handlers of their own."""
    children = [lg for name, lg in list(logging.root.manager.loggerDict.items())
                if name.startswith("pydicom.") and isinstance(lg, logging.Logger) and lg.handlers]
    return [logging.getLogger("pydicom"), *children]


@contextmanager
def pydicom_warnings(redact: Callable[[str], str] = scrub_values) -> Iterator[list[str]]:
    """Collect what pydicom warns about inside the block (and errors it only logs), redacted, once each, in order.

    pydicom sends each warning both to :mod:`warnings` and to its ``pydicom`` logger (so it would be printed
    twice, without the file's name, and with the real path or the rejected value when it quotes them), and logs a
    failed decoding plugin with a traceback: all of it is caught here — also from handlers someone attached to
    pydicom's loggers (``pydicom.config.debug()`` adds one that prints to stderr) — and the caller decides
    (reject the file, or log the messages naming it). The list is filled when the block ends.
    ``warnings.catch_warnings`` is process-global: do not decode in several threads at once (mammoflow
    parallelises with processes).
    """
    messages: list[str] = []
    logged: list[str] = []
    top = logging.getLogger("pydicom")
    collect = _Collect(logged)
    saved = [(lg, lg.handlers, lg.propagate) for lg in _pydicom_loggers()]
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        for lg, _, _ in saved:
            lg.handlers = []
        top.addHandler(collect)
        top.propagate = False  # child loggers (pydicom.pixels...) end here too
        try:
            yield messages
        finally:
            for lg, handlers, propagate in saved:
                lg.handlers, lg.propagate = handlers, propagate
            found = [*(str(w.message) for w in recorded), *logged]
            messages.extend(dict.fromkeys(redact(m) for m in found))
    if collect.withheld:
        log.debug("pydicom's debug output (%d line(s)) withheld: it dumps header bytes, identifiers included",
                  collect.withheld)


def unexpected_error(where: object, exc: BaseException, log_as: str | None = None,
                     redact: Callable[[str], str] = scrub_values) -> InputError:
    """The ``unexpected`` InputError of an error nobody foresaw while reading one file; logs its traceback once,
    at DEBUG level, redacted (the exception's text may quote header values or the real path)."""
    kind = type(exc).__name__
    frames = "".join(traceback.format_tb(exc.__traceback__))
    label = log_as or Path(str(where)).name or "<stream>"
    log.debug("%s: unexpected %s while reading it. Traceback (most recent call last):\n%s%s: %s",
              label, kind, redact(frames), kind, redact(str(exc)))
    return InputError(where, f"unexpected error: {kind}",
                      "re-export the image; if that does not help, run with --log-level DEBUG and report the "
                      "traceback logged for this file (it names neither the file's folders nor header values)",
                      code="unexpected")
