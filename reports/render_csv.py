"""CSV rendering: one file per table, numbers at full precision, spread in their own columns."""

from __future__ import annotations

import csv
from pathlib import Path

from reports.document import Document, Table


def _csv_value(value):
    """Numbers to ten significant digits: enough for any figure, without float noise like 0.30000000000000004."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".10g")
    return value


def table_rows(table: Table) -> tuple[list[str], list[list]]:
    """Header and rows: each column's value, then its fields (n, p10, p90, sd, k …) as `<key>_<field>`."""
    extra: dict[str, list[str]] = {c.key: [] for c in table.columns}
    for row in table.rows:
        for col, cell in zip(table.columns, row):
            for name in cell.fields:
                if name not in extra[col.key]:
                    extra[col.key].append(name)
    header = []
    for col in table.columns:
        header.append(col.key)
        header += [f"{col.key}_{name}" for name in extra[col.key]]
    rows = []
    for row in table.rows:
        out = []
        for col, cell in zip(table.columns, row):
            out.append(_csv_value(cell.value))
            out += [_csv_value(cell.fields.get(n)) for n in extra[col.key]]
        rows.append(out)
    return header, rows


def write_csv(doc: Document, out_dir: Path, stem: str) -> list[Path]:
    written = []
    for table in doc.tables():
        header, rows = table_rows(table)
        path = out_dir / f"{stem}_{table.key}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(path)
    return written
