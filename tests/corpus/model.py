"""The corpus table's vocabulary: a kind of bad input, what it must be found as, and the run that holds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The salt every run gets through ``MAMMOFLOW_SALT`` (a site salt: no public-default warning path).
SALT = "corpus-site-salt-5f1e0c"
#: Every planted identifier starts with this, so one byte search finds any leak, attributed or not.
PLANT = "ZZPLANT"
#: Folders named like a patient (DOE^JANE exports) start with this: allowed in the records folder's tables only.
PLANT_DIR = f"{PLANT}DIR"

# What a kind must be found as after the run.
QUARANTINED = "quarantined"  # named in quarantine.jsonl with a reason code, problem and fix
USED = "used"  # a record of records.jsonl (and not quarantined)
SKIPPED = "skipped"  # listed as skipped (or quarantined) with its reason: never dropped silently
USED_OR_QUARANTINED = "used_or_quarantined"  # either is documented behaviour; dropping it is not
FATAL = "fatal"  # the whole input cannot be read: exit 1, the file named in the message, no traceback


@dataclass(frozen=True)
class Target:
    """One input a kind must account for: a path (relative to the run's root, or a zip member), or a line of an
    annotation file (``annotation`` names the file: labels.csv, Info.txt, a CBIS CSV)."""

    rel: str | None = None
    annotation: str | None = None
    line: int | None = None
    record_id: str | None = None  # a source-derived id that also names it (mias:mdb005, cbis-ddsm:P_...)
    match: str | None = None  # a substring of the path to match instead of ``rel`` (non-UTF-8 names)

    def describe(self) -> str:
        if self.rel is not None:
            return self.rel
        if self.match is not None:
            return f"*{self.match}*"
        return f"{self.annotation}:{self.line}" + (f" ({self.record_id})" if self.record_id else "")


@dataclass(frozen=True)
class Expect:
    """The documented outcome of one kind. ``codes`` are fnmatch patterns (empty: any non-empty code);
    ``record_check(record) -> problem or None`` is asked of a used record (a label applied, a flag set)."""

    outcome: str
    codes: tuple[str, ...] = ()
    record_check: Callable[[dict[str, Any]], str | None] | None = None
    why: str = ""  # the issue line or code that defines it


@dataclass(frozen=True)
class Kind:
    """One row of the corpus table."""

    name: str
    run: str
    make: Callable[[Any], list[Target]]  # (Build) -> what must be accounted for
    expect: Expect


@dataclass
class RunSpec:
    """One ``mammoflow`` invocation over one input folder that holds many kinds plus a few good inputs.

    ``setup(build)`` writes the good inputs, ``finish(build)`` the annotation files after every kind was added,
    ``argv(paths)`` the command line (``paths`` has ``root``, ``out``, ``work``)."""

    name: str
    setup: Callable[[Any], None]
    finish: Callable[[Any], None]
    argv: Callable[[dict[str, Path]], list[str]]
    exit_code: int
    downstream: bool = False  # preprocess + build-dataset on its records (shards searched for identifiers)
    # README "--pseudonymise-paths": the real paths remain only in these tables of the records folder
    path_plants_allowed: tuple[str, ...] = ("records.jsonl", "quarantine.jsonl", "skipped.jsonl")
    notes: str = ""


@dataclass
class Build:
    """What a kind's ``make`` writes into: the run's root, a scratch folder outside it, the current kind's plant
    tag (identifiers planted for it are recorded in ``plants``) and the annotation lines of the run."""

    run: str
    root: Path
    work: Path
    tag: str = "G00"
    plants: dict[str, set[str]] = field(default_factory=dict)  # tag -> planted header identifier strings
    path_plants: dict[str, set[str]] = field(default_factory=dict)  # tag -> identifiers planted in file paths
    kind_tags: dict[str, str] = field(default_factory=dict)  # kind name -> tag
    lines: list[str] = field(default_factory=list)  # labels.csv / Info.txt lines (line 1 = first item)
    members: dict[str, bytes] = field(default_factory=dict)  # zip members (mias-rois)
    state: dict[str, Any] = field(default_factory=dict)  # anything a run's setup shares with its kinds

    def begin(self, kind: str, index: int) -> None:
        self.tag = f"K{index:03d}"
        self.kind_tags[kind] = self.tag

    def plant(self, *values: str) -> None:
        self.plants.setdefault(self.tag, set()).update(values)

    def plant_path(self, *values: str) -> None:
        self.path_plants.setdefault(self.tag, set()).update(values)

    def add_line(self, text: str) -> int:
        """Append an annotation line; returns its 1-based line number in the written file."""
        self.lines.append(text)
        return len(self.lines)
