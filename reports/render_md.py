"""Markdown rendering: one .md file, its figures as PNG files beside it."""

from __future__ import annotations

import re
from pathlib import Path

from reports.document import Bullets, Cell, Document, Figure, Note, Paragraph, Samples, Skipped, Table

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
_ENTITY = re.compile(r"&(?=#?[0-9A-Za-z]+;)")


def md_text(text: str) -> str:
    """Plain text made inert in Markdown: no raw HTML, no table breaks, no stray formatting."""
    # "<" is what opens raw HTML; "&" only matters where it would read as an entity.
    text = _ENTITY.sub("&amp;", text).replace("<", "&lt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return " ".join(text.split())  # newlines would end a table row or a list item


def _cell(cell: Cell) -> str:
    text = md_text(cell.text)
    return f"{text} ({md_text(cell.detail)})" if cell.detail else text


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def table_md(table: Table, section_title: str = "") -> list[str]:
    lines = [f"### {md_text(table.title)}", ""] if table.title != section_title else []
    lines.append("| " + " | ".join(md_text(c.label) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if table.note:
        lines += ["", f"_{md_text(table.note)}_"]
    return lines + [""]


def render_md(doc: Document, figure_dir: str = "plots") -> str:
    """The Markdown text; figures are referenced as `<figure_dir>/<key>.png`."""
    lines = [f"# {md_text(doc.title)}", ""]
    lines += [md_text(line) + "  " for line in doc.subtitle] + [""]
    for section in doc.sections:
        lines += [f"## {md_text(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                lines += [md_text(block.text), ""]
            elif isinstance(block, Note):
                prefix = "**Note:** " if block.level == "warn" else ""
                lines += [f"> {prefix}{md_text(block.text)}", ""]
            elif isinstance(block, Bullets):
                lines += [f"- {md_text(item)}" for item in block.items] + [""]
            elif isinstance(block, Table):
                lines += table_md(block, section.title)
            elif isinstance(block, Figure):
                lines += [f"![{md_text(block.title)}]({figure_dir}/{block.key}.png)", ""]
                if block.caption:
                    lines += [f"_{md_text(block.caption)}_", ""]
            elif isinstance(block, Skipped):
                lines += [f"> Plot skipped — {md_text(block.title)}: {md_text(block.reason)}", ""]
            elif isinstance(block, Samples):
                lines += [f"### {md_text(block.title)}", ""]
                for sample in block.samples:
                    fence = _fence(sample.output)
                    lines += [f"**{md_text(sample.heading)}** — {md_text(sample.detail)}", "", f"{fence}text"]
                    lines += [sample.output, fence, ""]
    return "\n".join(lines).rstrip() + "\n"


def write_md(doc: Document, out_dir: Path, stem: str) -> list[Path]:
    written = []
    figures = doc.figures()
    if figures:
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        for fig in figures:
            path = out_dir / "plots" / f"{fig.key}.png"
            path.write_bytes(fig.png)
            written.append(path)
    path = out_dir / f"{stem}.md"
    path.write_text(render_md(doc), encoding="utf-8")
    return [path] + written
