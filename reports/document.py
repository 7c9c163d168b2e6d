"""The report as data: sections of paragraphs, tables, figures and sample outputs.

Section builders produce these blocks; the Markdown, HTML and CSV renderers only walk them,
so a new section (or a new output format) is one small change in one place. Text here is
plain text: each renderer escapes it for its own format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union


@dataclass
class Cell:
    """One table cell: a headline, the spread beside it, and the numbers behind both."""

    text: str  # the headline as printed, e.g. "163.5" or "82.6%" or "—"
    value: float | str | None = None  # what sorting and the CSV use
    detail: str = ""  # printed beside the headline, e.g. "p10–p90 150–171, n=46"
    fields: dict[str, Any] = field(default_factory=dict)  # extra CSV columns, e.g. {"n": 46}
    flag: str = ""  # "good" | "bad" | "warn": a highlight the HTML may show


@dataclass
class Column:
    key: str  # machine name, used for CSV headers
    label: str  # header as printed, unit included
    help: str = ""  # one line on how the figure is computed


@dataclass
class Table:
    key: str  # file stem for its CSV
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    note: str = ""


@dataclass
class Paragraph:
    text: str


@dataclass
class Note:
    """A remark the reader must not miss (missing data, caveats)."""

    text: str
    level: str = "info"  # "info" | "warn"


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Figure:
    key: str  # file stem for its PNG
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Skipped:
    """A figure or table that could not be drawn, with the reason."""

    title: str
    reason: str


@dataclass
class Sample:
    heading: str
    output: str
    detail: str = ""


@dataclass
class Samples:
    title: str
    samples: list[Sample]


Block = Union[Paragraph, Note, Bullets, Table, Figure, Skipped, Samples]


@dataclass
class Section:
    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    subtitle: list[str]  # lines under the title: which run, which machine
    sections: list[Section]

    def tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


SectionBuilder = Callable[[Any], Union[Section, None]]


def assemble(title: str, subtitle: list[str], builders: list[SectionBuilder], context: Any) -> Document:
    """Run each section builder in order; one that has nothing to say returns None."""
    sections = []
    for build in builders:
        section = build(context)
        if section is not None and section.blocks:
            sections.append(section)
    return Document(title=title, subtitle=subtitle, sections=sections)


# ------------------------------------------------------------------ cell formatting

DASH = "—"


def missing(reason: str = "") -> Cell:
    return Cell(text=DASH, value=None, detail=reason, fields={"why_missing": reason} if reason else {})


def number_text(value: float | None, digits: int = 1, thousands: bool = False) -> str:
    if value is None:
        return DASH
    if thousands:
        return f"{value:,.{digits}f}"
    return f"{value:.{digits}f}"


def sig_text(value: float | None, sig: int = 3) -> str:
    """A figure to `sig` significant digits, without falling into exponent form for usual sizes."""
    if value is None:
        return DASH
    if value == 0:
        return "0"
    from math import floor, log10

    digits = max(0, sig - 1 - int(floor(log10(abs(value)))))
    return f"{value:.{digits}f}"
