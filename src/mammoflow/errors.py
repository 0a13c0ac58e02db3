"""Errors that name the file, the problem and the fix."""

from __future__ import annotations


class MammoflowError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(MammoflowError):
    """A configuration value is missing or invalid."""


class InputError(MammoflowError):
    """One input (file, annotation, record) cannot be used.

    Sources catch it per item, quarantine the item and go on, so one bad file never stops a job.
    ``code`` is a short stable tag (``truncated``, ``corrupt``, ``rgb``, ``bit_depth``, ``modality``,
    ``outside_image``, ``negative_radius``, ``duplicate_id``, ``unknown_label``, ``missing_file``, ...)
    that reports count by.
    """

    def __init__(self, path: object, problem: str, fix: str, code: str = "invalid", record_id: str | None = None):
        self.path = str(path) if path is not None else ""
        self.problem = problem
        self.fix = fix
        self.code = code
        self.record_id = record_id
        where = self.path + (f" [{record_id}]" if record_id else "")
        super().__init__(f"{where}: {problem}. Fix: {fix}")
