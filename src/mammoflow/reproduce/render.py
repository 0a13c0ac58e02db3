"""Rendering helpers of the reproduction reports: number formatting and a self-contained HTML page from Markdown.

Shared by the paper-table report (:mod:`mammoflow.reproduce.report`) and the pretrained-protocol section
(:mod:`mammoflow.reproduce.pretrained_report`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_ci(cell: Mapping[str, Any] | None, digits: int = 4) -> str:
    if not cell or cell.get("value") is None:
        return "n/a"
    if cell.get("ci_low") is None:
        return fmt(cell["value"], digits)
    flag = " (degenerate interval)" if cell.get("degenerate") else ""
    return f"{fmt(cell['value'], digits)} [{fmt(cell['ci_low'], digits)}, {fmt(cell['ci_high'], digits)}]{flag}"


def render_html(markdown: str, title: str, images: Mapping[str, str]) -> str:
    """A self-contained HTML page from the Markdown (tables, headings, lists, images embedded as data URIs)."""
    import html

    body: list[str] = []
    in_table = False
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-", " "} for c in cells):
                continue
            if not in_table:
                body.append('<div class="wide"><table>')
                tag, in_table = "th", True
            else:
                tag = "td"
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table></div>")
            in_table = False
        if line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            body.append(f'<figure><img alt="figure" src="{images.get(src, html.escape(src))}"></figure>')
        elif line.startswith("### "):
            body.append(f"<h3>{_inline(line[4:])}</h3>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            continue  # the title is written once, below
        elif line.startswith("> "):
            body.append(f'<p class="warn">{_inline(line[2:])}</p>')
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table></div>")
    return (_HTML_HEAD.replace("{title}", html.escape(title)) + f"<h1>{html.escape(title)}</h1>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Escape HTML, then Markdown bold/italic/code and the verdict words as coloured labels."""
    import html
    import re

    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<i>\1</i>", out)
    return re.sub(r"\b(match|beat|miss)\b(?=\s*($|<))", r'<span class="\1">\1</span>', out)


_HTML_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mammoflow reproduce"><title>{title}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1250px;
       padding: 1.5rem 2rem 4rem; color: #1d2327; line-height: 1.45; }
h2 { border-bottom: 2px solid #dde3e8; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .85rem; }
th, td { border: 1px solid #dde3e8; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } .wide { overflow-x: auto; }
.warn { background: #fff4e5; border-left: 4px solid #e69500; padding: .5rem .8rem; }
figure img { max-width: 520px; border: 1px solid #dde3e8; }
.match { color: #1a7f37; font-weight: 600; } .beat { color: #0550ae; font-weight: 600; }
.miss { color: #b42318; font-weight: 600; }
</style></head><body>
"""
