"""The verbs' output options checked before any work (see :mod:`mammoflow.outputs`): a usage error naming the path
and the fix. Not a verb (the leading underscore keeps it out of ``mammoflow --help``)."""

from __future__ import annotations

import os

import click

from mammoflow.outputs import output_problem


def check_out(value: str | os.PathLike[str] | None, param_hint: str = "--out", *, is_file: bool = False) -> None:
    """Refuse an output option that cannot be written (a file where a folder is needed, a path under a file, a
    folder that refuses new entries); ``None`` (option not given) is fine."""
    if value is None:
        return
    problem = output_problem(value, is_file=is_file)
    if problem is not None:
        raise click.BadParameter(problem, param_hint=param_hint)
