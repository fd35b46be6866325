"""The HTML report's building blocks: its inline style sheet, escaping, number formats, tables
and inline images.

The style sheet uses system fonts only (no web font is fetched); tables scroll inside their box
with a sticky header, so 23 classes stay readable; it prints without the scroll boxes.
"""

from __future__ import annotations

import base64
import html
import json
import math

CSS = """
:root { --ink:#1f2328; --muted:#656d76; --line:#d0d7de; --soft:#f6f8fa; --accent:#0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { padding: 18px 28px 10px; border-bottom: 1px solid var(--line); background: var(--soft); }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 26px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: var(--muted); margin: 0 0 8px; }
.banner { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 12px; }
nav a { color: var(--accent); text-decoration: none; }
main { padding: 0 28px 24px; max-width: 1280px; }
footer { padding: 12px 28px; color: var(--muted); border-top: 1px solid var(--line); }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 132px; }
.card .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .k { color: var(--muted); font-size: 12px; }
.scroll { overflow: auto; width: fit-content; max-width: 100%; border: 1px solid var(--line);
  border-radius: 6px; margin: 6px 0 10px; }
.scroll.tall { max-height: 640px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
thead th { position: sticky; top: 0; background: var(--soft); z-index: 1; }
th.name, td.name { text-align: left; position: sticky; left: 0; background: #fff; }
thead th.name { background: var(--soft); z-index: 2; }
td.note { text-align: left; color: var(--muted); white-space: normal; min-width: 200px; }
table.cm td { min-width: 34px; text-align: center; border: 1px solid #eef0f2; }
table.kv th { text-align: left; vertical-align: top; color: var(--muted); font-weight: 500; }
table.kv td { text-align: left; white-space: normal; }
table.kv table.kv { margin: 0; }
img { max-width: 100%; height: auto; }
img.half { max-width: 48%; margin-right: 1%; vertical-align: top; }
.row { display: flex; flex-wrap: wrap; gap: 8px; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
details img.wide { max-width: none; }
.missing { color: #8a4600; background: #fff4e5; border-left: 3px solid #f0883e; padding: 4px 10px; }
.good { color: #1a7f37; font-weight: 600; }
.bad { color: #c62828; font-weight: 600; }
.note { color: var(--muted); }
.wrap { white-space: normal; display: inline-block; min-width: 240px; text-align: left; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
code.hash { color: var(--muted); }
@media print { .scroll { max-height: none; overflow: visible; } nav { display: none; } }
"""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def missing(why: str) -> str:
    return f'<p class="missing">Missing: {escape(why)}</p>'


def number(value, digits: int = 3) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else escape(value)
    if isinstance(value, float) and math.isnan(value):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def kilobytes(n) -> str:
    return "—" if not isinstance(n, (int, float)) else f"{n / 1000:.1f} KB ({int(n):,} B)"


def png_image(data: bytes, alt: str, css: str = "") -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img class="{css}" alt="{escape(alt)}" src="{src}">'


def table(header, rows, css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll {css}"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def shaded_cell(value, good_high: bool = True) -> str:
    """A cell tinted by a score in [0, 1] (green good, red poor): the eye finds weak classes."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "<td>—</td>"
    v = max(0.0, min(1.0, float(value if good_high else 1 - value)))
    hue = int(120 * v)
    return f'<td style="background:hsl({hue},70%,88%)">{value:.3f}</td>'


def dict_table(d: dict, depth: int = 0) -> str:
    """A nested dict as a two-column table; lists of scalars are joined, deeper dicts nest."""
    rows = []
    for key, value in d.items():
        if isinstance(value, dict) and depth < 3:
            cell = dict_table(value, depth + 1)
        elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            cell = escape(", ".join(str(v) for v in value))
        elif isinstance(value, (dict, list)):
            cell = f"<code>{escape(json.dumps(value))}</code>"
        elif isinstance(value, float):
            cell = number(value, 4)
        else:
            cell = escape(value)
        rows.append(f'<tr><th>{escape(key)}</th><td>{cell}</td></tr>')
    return f'<table class="kv">{"".join(rows)}</table>'
