"""HTML rendering: one self-contained file (inline CSS, PNGs as data URIs, a small sort script).

Every piece of text — model outputs above all — goes through html.escape, so an output that
contains markup shows as text. As a second guard the page's Content-Security-Policy allows
only the report's own script and style (by hash) and data: images: even markup that slipped
through could neither run a script nor load anything.
"""

from __future__ import annotations

import base64
import hashlib
import html
from pathlib import Path

from reports.document import Bullets, Cell, Document, Figure, Note, Paragraph, Samples, Skipped, Table

CSS = """
:root { --fg:#1d2330; --muted:#5d6778; --line:#d9dee7; --head:#eef1f6; --accent:#2f6fd0; --warn:#fff5e0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1400px; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
.sub { color: var(--muted); margin: 0; }
nav { margin: 14px 0 0; font-size: 13px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
.note { background: #eef4ff; border-left: 4px solid var(--accent); padding: 8px 12px; margin: 10px 0; }
.note.warn { background: var(--warn); border-left-color: #d99a1e; }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; margin: 6px 0 4px; font-size: 13px; }
table.data th, table.data td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; }
table.data th { background: var(--head); text-align: left; position: sticky; top: 0; white-space: nowrap; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " \\2195"; color: #9aa3b2; font-size: 11px; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; color: var(--accent); }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; color: var(--accent); }
table.data tbody tr:nth-child(even) { background: #f8f9fb; }
td.num { text-align: right; white-space: nowrap; }
td .sp { display: block; color: var(--muted); font-size: 11px; }
td.good { background: #e3f5e8; }
td.bad { background: #fbe4e4; }
td.warn { background: var(--warn); }
p.tnote { color: var(--muted); font-size: 12px; margin: 2px 0 12px; }
figure { margin: 16px 0; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
.skipped { color: var(--muted); font-style: italic; }
details { border: 1px solid var(--line); border-radius: 4px; margin: 6px 0; padding: 4px 10px; }
summary { cursor: pointer; font-weight: 600; }
pre.output { white-space: pre-wrap; word-break: break-word; background: #f6f7f9; border: 1px solid var(--line);
             padding: 8px; font-size: 12px; max-height: 360px; overflow: auto; }
.meta { color: var(--muted); font-size: 12px; margin: 8px 0 2px; }
"""

SORT_JS = """
(function () {
  function key(cell) {
    var v = cell ? cell.getAttribute('data-sort') : null;
    if (v === null || v === '') return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function sortTable(table, col, th) {
    var body = table.tBodies[0];
    var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    table.querySelectorAll('thead th').forEach(function (h) { h.setAttribute('aria-sort', 'none'); });
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null && y === null) return 0;
      if (x === null) return 1;  /* missing figures stay at the bottom in both directions */
      if (y === null) return -1;
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return x < y ? -dir : (x > y ? dir : 0);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll('table.data').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (th, col) {
      th.setAttribute('aria-sort', 'none');
      th.tabIndex = 0;
      th.addEventListener('click', function () { sortTable(table, col, th); });
      th.addEventListener('keydown', function (e) { if (e.key === 'Enter') { sortTable(table, col, th); } });
    });
    table.classList.add('sortable');
  });
  document.body.setAttribute('data-sort-ready', String(document.querySelectorAll('table.sortable').length));
})();
"""


def esc(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


def _cell(cell: Cell) -> str:
    classes = []
    if isinstance(cell.value, (int, float)) and not isinstance(cell.value, bool):
        classes.append("num")
    if cell.flag:
        classes.append(cell.flag)
    sort = "" if cell.value is None else (repr(float(cell.value)) if isinstance(cell.value, (int, float)) else str(cell.value))
    cls = f' class="{" ".join(classes)}"' if classes else ""
    detail = f'<span class="sp">{esc(cell.detail)}</span>' if cell.detail else ""
    return f'<td{cls} data-sort="{esc(sort)}">{esc(cell.text)}{detail}</td>'


def table_html(table: Table, section_title: str = "") -> str:
    head = "".join(f'<th title="{esc(c.help)}">{esc(c.label)}</th>' for c in table.columns)
    body = "\n".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in table.rows)
    note = f'<p class="tnote">{esc(table.note)}</p>' if table.note else ""
    heading = f'<h3 id="t-{esc(table.key)}">{esc(table.title)}</h3>' if table.title != section_title else ""
    return (
        f'{heading}<div class="scroll"><table class="data" data-table="{esc(table.key)}">'
        f"<thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></div>{note}"
    )


def _block(block, section_title: str = "") -> str:
    if isinstance(block, Paragraph):
        return f"<p>{esc(block.text)}</p>"
    if isinstance(block, Note):
        return f'<div class="note {esc(block.level)}">{esc(block.text)}</div>'
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        return table_html(block, section_title)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{esc(block.caption)}</figcaption>" if block.caption else ""
        return (
            f'<figure id="f-{esc(block.key)}"><img alt="{esc(block.title)}" '
            f'src="data:image/png;base64,{data}">{caption}</figure>'
        )
    if isinstance(block, Skipped):
        return f'<p class="skipped">Plot skipped — {esc(block.title)}: {esc(block.reason)}</p>'
    if isinstance(block, Samples):
        inner = "".join(
            f'<p class="meta"><b>{esc(s.heading)}</b> — {esc(s.detail)}</p><pre class="output">{esc(s.output)}</pre>'
            for s in block.samples
        )
        return f"<details><summary>{esc(block.title)} ({len(block.samples)})</summary>{inner}</details>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(doc: Document) -> str:
    csp = (
        "default-src 'none'; img-src data:; "
        f"style-src {_csp_hash(CSS)}; script-src {_csp_hash(SORT_JS)}; base-uri 'none'; form-action 'none'"
    )
    nav = "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in doc.sections)
    sections = "\n".join(
        f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>' + "\n".join(_block(b, s.title) for b in s.blocks) + "</section>"
        for s in doc.sections
    )
    subtitle = "".join(f'<p class="sub">{esc(line)}</p>' for line in doc.subtitle)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(doc.title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{esc(doc.title)}</h1>{subtitle}<nav>{nav}</nav></header>\n{sections}\n"
        f"<script>{SORT_JS}</script></body></html>\n"
    )


def write_html(doc: Document, out_dir: Path, stem: str) -> list[Path]:
    path = out_dir / f"{stem}.html"
    path.write_text(render_html(doc), encoding="utf-8")
    return [path]
