"""Writing a report document in the asked-for formats."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from reports.document import Document
from reports.render_csv import write_csv
from reports.render_html import write_html
from reports.render_md import write_md

WRITERS = {"md": write_md, "html": write_html, "csv": write_csv}
DEFAULT_FORMATS = ("md", "html", "csv")


def parse_formats(text: str) -> tuple[str, ...]:
    """'md,html' -> ('md', 'html'); an unknown name is a one-line error."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in WRITERS]
    if unknown or not names:
        raise BenchError(f"unknown report format {', '.join(unknown) or repr(text)}; choose from {', '.join(WRITERS)}")
    return names


def write_document(doc: Document, out_dir: str | Path, formats=DEFAULT_FORMATS, stem: str = "report") -> list[Path]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in formats:
            written += WRITERS[name](doc, out, stem)
    except OSError as exc:
        raise BenchError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    return written
