"""What a run left behind, read back, and the five promises checked per kind.

1. no traceback (nor a crash by signal) from the console script;
2. the documented exit code (README "Exit codes");
3. the input accounted for as documented: quarantined with a reason code (problem and fix given), used, or
   skipped and listed with its reason; a fatal input named in the error message;
4. the accounting identity of ``ingest_summary.json``: read = used + quarantined + skipped (a missing ``skipped``
   counts 0), and the counts match the tables;
5. no planted identifier in any output or log, searched as bytes in every file (and file name) the run wrote.
   Identifiers planted in paths may stay in the records folder's own tables only.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.corpus.model import FATAL, PLANT, QUARANTINED, SKIPPED, USED, USED_OR_QUARANTINED, Kind, Target
from tests.corpus.runner import Command, RunResult

TRACEBACK = b"Traceback (most recent call last)"
_ANY_PLANT = re.compile(re.escape(PLANT).encode() + rb"[A-Za-z0-9^ _]*")


# ----------------------------------------------------------------------------------------- reading outputs


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass
class Outputs:
    """The records folder's tables and every output file's bytes (for the identifier search)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    read_error: str | None = None
    files: list[tuple[str, bytes, bool]] = field(default_factory=list)  # (path, bytes, may hold real paths)


def load(result: RunResult) -> Outputs:
    out = Outputs()
    folder = result.paths["out"]
    try:
        out.records = _jsonl(folder / "records.jsonl")
        out.quarantine = _jsonl(folder / "quarantine.jsonl")
        out.skipped = _jsonl(folder / "skipped.jsonl")
        summary = _json(folder / "ingest_summary.json")
        is_ingest = result.ingest is not None and result.ingest.argv[:1] == ["ingest"]
        out.summary = summary if is_ingest else None  # preprocess writes its own summary: not an ingest's
    except (OSError, ValueError) as exc:
        out.read_error = f"cannot read the records folder: {type(exc).__name__}: {exc}"
    allowed = {folder / name for name in result.spec.path_plants_allowed}
    for top in result.scan_folders():
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                rel = os.fsencode(path.relative_to(result.paths["run"]))
                out.files.append((os.fsdecode(rel), rel + b"\n" + path.read_bytes(), path in allowed))
    return out


# ----------------------------------------------------------------------------------------- finding a target


def _path_matches(path: str, target: Target) -> bool:
    if not path:
        return False
    if target.rel is not None and (path == target.rel or path.endswith("/" + target.rel)):
        return True
    return target.match is not None and target.match in path


def _line_matches(entry: dict[str, Any], target: Target) -> bool:
    if target.annotation is None or target.line is None:
        return False
    path, problem = str(entry.get("path") or ""), str(entry.get("problem") or entry.get("note") or "")
    return path.endswith(target.annotation) and re.search(rf"\blines? (?:\d+, )*{target.line}\b", problem) is not None


def find(entries: list[dict[str, Any]], target: Target) -> dict[str, Any] | None:
    for entry in entries:
        if _path_matches(str(entry.get("path") or entry.get("image_path") or ""), target) or \
                (target.record_id and entry.get("record_id") == target.record_id) or _line_matches(entry, target):
            return entry
    return None


def where(outputs: Outputs, target: Target) -> tuple[dict | None, dict | None, dict | None]:
    """The target's record, quarantine entry and skipped entry (each None when absent)."""
    return find(outputs.records, target), find(outputs.quarantine, target), find(outputs.skipped, target)


# ----------------------------------------------------------------------------------------- the checks


def crash(cmd: Command) -> str | None:
    """Why ``cmd`` counts as a crash: a traceback printed, a signal, a time-out."""
    text = cmd.stdout + b"\n" + cmd.stderr
    if TRACEBACK in text:
        tail = [ln for ln in text[text.rindex(TRACEBACK):].decode("utf-8", "replace").splitlines() if ln.strip()]
        return f"traceback from `mammoflow {cmd.argv[0]}`: {tail[-1].strip()[:200] if tail else '?'}"
    if cmd.exit_code < 0:
        return f"`mammoflow {cmd.argv[0]}` killed (exit {cmd.exit_code})"
    if b"terminate called" in text:
        return f"`mammoflow {cmd.argv[0]}` aborted (terminate called)"
    return None


def _entry_problems(entry: dict[str, Any], codes: tuple[str, ...], what: str) -> list[str]:
    code = str(entry.get("code") or entry.get("reason") or "")
    found = []
    if not code:
        found.append(f"{what} without a reason code")
    elif codes and not any(fnmatch.fnmatchcase(code, c) for c in codes):
        found.append(f"{what} as {code!r}, expected {' or '.join(codes)} ({str(entry.get('problem', ''))[:120]})")
    if "problem" in entry and not (str(entry.get("problem") or "").strip() and str(entry.get("fix") or "").strip()):
        found.append(f"{what} without a problem and fix text")
    return found


def accounted(kind: Kind, targets: list[Target], outputs: Outputs, result: RunResult) -> list[str]:
    """Promise 3: every target found where the kind's outcome says."""
    e = kind.expect
    problems: list[str] = [] if targets else ["the kind names no input to account for (a bug of the corpus)"]
    for t in targets:
        rec, qua, skp = where(outputs, t)
        name = t.describe()
        if e.outcome == FATAL:
            err = (result.ingest.stderr + result.ingest.stdout).decode("utf-8", "replace") if result.ingest else ""
            base = Path(t.rel or t.annotation or "").name
            if base not in err and qua is None:
                problems.append(f"{name} not named in the error message (stderr: {err.strip()[-160:]!r})")
            elif result.spec.exit_code == 1 and "fix" not in err.lower():  # errors name the file and the fix
                problems.append(f"the error about {name} says no fix (stderr: {err.strip()[-160:]!r})")
        elif e.outcome == QUARANTINED:
            if qua is not None:
                problems += _entry_problems(qua, e.codes, f"{name} quarantined")
            elif rec is not None:
                problems.append(f"{name} used, expected quarantined")
            elif skp is not None:
                problems.append(f"{name} skipped ({skp.get('reason')}), expected quarantined")
            else:
                problems.append(f"{name} silently dropped (in no table)")
        elif e.outcome == USED:
            if qua is not None:
                problems.append(f"{name} quarantined [{qua.get('code')}]: {str(qua.get('problem'))[:150]}")
            elif rec is None:
                problems.append(f"{name} not used" + (f" (skipped: {skp.get('reason')})" if skp else
                                                      " (silently dropped)"))
            elif e.record_check is not None and (why := e.record_check(rec)):
                problems.append(f"{name}: {why}")
        elif e.outcome == SKIPPED:
            if skp is not None:
                problems += _entry_problems(skp, e.codes, f"{name} skipped")
            elif qua is not None:
                problems.append(f"{name} quarantined [{qua.get('code')}], expected skipped and listed")
            elif rec is not None:
                problems.append(f"{name} used, expected skipped")
            else:
                problems.append(f"{name} silently dropped (in no table)")
        elif e.outcome == USED_OR_QUARANTINED:
            if qua is not None:
                problems += _entry_problems(qua, e.codes, f"{name} quarantined")
            elif rec is None:
                problems.append(f"{name} silently dropped (in no table)")
    return problems


def silently_dropped(problems: list[str]) -> bool:
    return any("silently dropped" in p for p in problems)


def identity(outputs: Outputs, fatal: bool) -> list[str]:
    """Promise 4: read = used + quarantined + skipped, and the counts match the tables."""
    s = outputs.summary
    if outputs.read_error:
        return [outputs.read_error]
    if s is None:
        return [] if fatal else ["no ingest_summary.json written"]
    skipped = s.get("skipped", 0)
    skipped = len(skipped) if isinstance(skipped, (list, dict)) else int(skipped or 0)
    problems = []
    if s.get("read") != s.get("used", 0) + s.get("quarantined", 0) + skipped:
        problems.append(f"read {s.get('read')} != used {s.get('used')} + quarantined {s.get('quarantined')} + "
                        f"skipped {skipped}")
    for key, table in (("used", outputs.records), ("quarantined", outputs.quarantine)):
        if s.get(key) != len(table):
            problems.append(f"summary {key} {s.get(key)} != {len(table)} lines in the table")
    if outputs.skipped and skipped != len(outputs.skipped):
        problems.append(f"summary skipped {skipped} != {len(outputs.skipped)} lines in skipped.jsonl")
    return problems


def leaks(outputs: Outputs, header: set[str], paths: set[str]) -> list[str]:
    """Promise 5: ``(identifier, file)`` hits; path identifiers are allowed in the records folder's tables."""
    found = []
    for name, data, may_hold_paths in outputs.files:
        for value in sorted(header):
            if value.encode() in data:
                found.append(f"{value!r} in {name}")
        if not may_hold_paths:
            for value in sorted(paths):
                if value.encode() in data:
                    found.append(f"{value!r} in {name}")
    return found


def any_plant(outputs: Outputs, header: set[str], paths: set[str]) -> list[str]:
    """The catch-all: every other planted-looking string in the outputs (partial or unattributed leaks; those
    that start with a known planted value are reported by :func:`leaks`, and path ones are allowed where paths
    may be)."""
    found = []
    for name, data, _ in outputs.files:
        for match in sorted(set(_ANY_PLANT.findall(data))):
            text = match.decode()
            if any(text.startswith(p) for p in header | paths):
                continue
            found.append(f"{text!r} in {name}")
    return found


def run_leaks(result: RunResult, outputs: Outputs) -> list[str]:
    """Every identifier of a run (of any kind or good input) found where it must not be."""
    header = set().union(*result.build.plants.values()) if result.build.plants else set()
    paths = set().union(*result.build.path_plants.values()) if result.build.path_plants else set()
    return leaks(outputs, header, paths) + any_plant(outputs, header, paths)


def check_kind(kind: Kind, result: RunResult, outputs: Outputs) -> list[str]:
    """Every broken promise of one kind, most telling first (empty: the kind passes)."""
    if kind.name in result.make_errors:
        return [f"the corpus could not write this input: {result.make_errors[kind.name]}"]
    if result.setup_error:
        return [f"the corpus could not set up run {result.spec.name}: {result.setup_error}"]
    assert result.ingest is not None
    problems: list[str] = []
    if why := crash(result.ingest):
        problems.append(why)
    if result.ingest.exit_code != result.spec.exit_code:
        last = result.ingest.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        problems.append(f"exit {result.ingest.exit_code}, documented {result.spec.exit_code} "
                        f"(run {result.spec.name}; last stderr line: {last[0][:160]!r})")
    problems += accounted(kind, result.targets.get(kind.name, []), outputs, result)
    problems += identity(outputs, kind.expect.outcome == FATAL)
    tag = result.build.kind_tags.get(kind.name, "")
    problems += [f"identifier leaked: {hit}" for hit in
                 leaks(outputs, result.build.plants.get(tag, set()), result.build.path_plants.get(tag, set()))]
    return problems
