"""Formatting helpers of `make_readme.py`: committed results, machine stamps, wrapped markdown, key tables.

A result's key table is cut from its own `.md` (the tables under its `## ` headings), so the README shows the
numbers exactly as the result printed them.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from typing import Any

import common

PERCENT = "{:.0%}"  # shares of the ceiling, e.g. 44%

Row = dict[str, str]


def load(name: str) -> dict[str, Any] | None:
    """A committed result's JSON (`results/<name>.json`, `name` may hold a folder), or None when missing or quick."""
    p = common.RESULTS / f"{name}.json"
    if not p.is_file():
        return None
    res = json.loads(p.read_text(encoding="utf-8"))
    return None if res.get("quick") else res


def stamp(machine: dict[str, Any] | None) -> str:
    """'AMD EPYC · git 2db13def9962+dirty · 2026-12-02': where and at which commit a result was measured."""
    if not machine:
        return "–"
    git = machine.get("git") or {}
    commit = f"{git.get('commit') or '?'}{'+dirty' if git.get('dirty') else ''}"
    return f"{machine.get('cpu_model', '?')} · git {commit} · {str(machine.get('date_utc', '?'))[:10]}"


BLOCK_START = re.compile(r"[-*+] |[#>|]|\d+[.)] ")  # a wrapped line starting so would begin a list, heading, table


def para(text: str, indent: str = "") -> str:
    """A paragraph (or list item: `indent`) wrapped like the repository's hand-written markdown; no line starts a
    block."""
    lines: list[str] = []
    for line in textwrap.wrap(text, 115, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False):
        if lines and BLOCK_START.match(line.lstrip()):
            lines[-1] += " " + line
        else:
            lines.append(line)
    return "\n".join(lines)


def link(rel: str, text: str, label: str | None = None) -> str:
    """A link into `results/`, followed by the no-longer-shipped label where there is one."""
    return f"[{text}](results/{rel})" + (f" *({label})*" if label else "")


# ---- key tables from a result's markdown ----------------------------------------------------------------------------
def md_tables(md: str) -> list[tuple[str, list[str]]]:
    """Each table of a result's markdown with the `## ` heading above it."""
    out: list[tuple[str, list[str]]] = []
    heading, table = "", []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            out.append((heading, table))
            table = []
        if line.startswith("## "):
            heading = line[3:].strip()
    return out


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def key_table(md: str, heading: str, keep: Callable[[Row], bool] | None = None, limit: int | None = None) -> list[str]:
    """The first table under a heading starting with `heading`, its rows filtered by `keep` and cut at `limit`."""
    for head, table in md_tables(md):
        if head.startswith(heading):
            names = cells(table[0])
            rows = [r for r in table[2:] if keep is None or keep(dict(zip(names, cells(r), strict=False)))]
            return [f"*{head}:*", "", *table[:2], *rows[:limit], ""]
    return []


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**not met**")


def ms(m: dict[str, Any]) -> str:
    """Mean ± std of a downstream metric in points (x100)."""
    return "–" if m.get("mean") is None else f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"
