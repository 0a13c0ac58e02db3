"""``mammoflow registry``: list, show, promote and roll back registered model versions; read the audit log."""

from __future__ import annotations

import json

import click

REGISTRY_ENV = "MAMMOFLOW_REGISTRY"

_EPILOG = """\b
Examples:
  mammoflow registry --root gs://bucket/mammoflow/registry list
  mammoflow registry show v0003
  mammoflow registry promote v0003 --reason "radiologist review of 50 cases passed" --by alice
  mammoflow registry promote v0004 --force --reason "new label definition; drop in recall expected" --by alice
  mammoflow registry rollback --reason "false positives reported by site B"
  mammoflow registry audit --limit 20

\b
The root defaults to $MAMMOFLOW_REGISTRY. Every promote and rollback needs --reason; who is --by, else $USER.
Both are written to the append-only audit log before the champion changes."""


def _fmt_metric(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    text = f"{entry['value']:.3f}"
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"
    return text


@click.group(epilog=_EPILOG)
@click.option("--root", envvar=REGISTRY_ENV, required=True,
              help=f"Registry root: a folder or gs://bucket/prefix (default: ${REGISTRY_ENV}).")
@click.pass_context
def command(ctx: click.Context, root: str) -> None:
    """The model registry: trained versions, the champion alias and the audit log."""
    from mammoflow.registry import ModelRegistry

    ctx.obj = ModelRegistry(root)


@command.command("list")
@click.option("--metric", "metrics", multiple=True, default=("roi.roc_auc", "roi.tumour_recall"), show_default=True,
              help="Headline metrics to show (level.metric; repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version instead of a table.")
@click.pass_obj
def list_versions(registry, metrics: tuple[str, ...], as_json: bool) -> None:
    """Every version, oldest first; the champion is marked with *."""
    champion = (registry.alias() or {}).get("version")
    versions = registry.versions()
    if as_json:
        for v in versions:
            click.echo(json.dumps({**v.info, "champion": v.version == champion}, sort_keys=True))
        return
    if not versions:
        click.echo(f"{registry.root}: no versions yet")
        return
    head = ["", "version", "created", "verdict", "eval split"] + list(metrics)
    rows = []
    for v in versions:
        verdict = v.verdict or {}
        status = "-" if not verdict else ("forced" if verdict.get("forced") else
                                          ("blessed" if verdict.get("blessed") else "refused"))
        split = v.evaluation
        rows.append(["*" if v.version == champion else "", v.version, v.created[:19], status,
                     f"{split.get('split', '-')}:{str(split.get('split_sha256') or '')[:8]}"]
                    + [_fmt_metric(v.info.get("metrics", {}).get(m)) for m in metrics])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@command.command("show")
@click.argument("version")
@click.pass_obj
def show(registry, version: str) -> None:
    """One version's record (version.json) and its blessing verdict."""
    v = registry.get(version)
    champion = (registry.alias() or {}).get("version")
    click.echo(json.dumps({**v.info, "uri": v.uri, "champion": v.version == champion}, indent=2, sort_keys=True))


@command.command("promote")
@click.argument("version")
@click.option("--reason", required=True, help="Why (written to the audit log).")
@click.option("--by", default=None, help="Who (default: $USER).")
@click.option("--force", is_flag=True, help="Promote a version its blessing verdict refused (an audited override).")
@click.pass_obj
def promote(registry, version: str, reason: str, by: str | None, force: bool) -> None:
    """Make VERSION the champion."""
    change = registry.promote(version, reason=reason, by=by, force=force)
    if change.changed:
        click.echo(f"champion: {change.from_version or '(none)'} -> {change.to_version} "
                   f"(audit event {change.event.event_id})")
    else:
        click.echo(f"{version} is already the champion: nothing changed")


@command.command("rollback")
@click.option("--reason", required=True, help="Why (written to the audit log).")
@click.option("--by", default=None, help="Who (default: $USER).")
@click.pass_obj
def rollback(registry, reason: str, by: str | None) -> None:
    """Return the champion to the version it replaced."""
    change = registry.rollback(reason=reason, by=by)
    click.echo(f"champion rolled back: {change.from_version} -> {change.to_version} "
               f"(audit event {change.event.event_id})")


@command.command("audit")
@click.option("--limit", type=int, default=None, help="Only the last N events.")
@click.pass_obj
def audit(registry, limit: int | None) -> None:
    """The audit log, one JSON line per event, oldest first (who, when, why, action, from -> to)."""
    for event in registry.audit_log(limit):
        click.echo(event.line())

