"""Writing result rows for the CLI: one function for every --format."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

FORMATS = ("table", "json", "jsonl", "csv")
SEARCH_FORMATS = (*FORMATS, "paths")


def write_rows(
    rows: Iterable[dict[str, Any]],
    columns: Sequence[str],
    fmt: str,
    out: IO[str] | None = None,
) -> None:
    """Write dict rows to `out` (stdout) as a table, JSON array, JSON lines, CSV or paths."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump(
            [{c: row.get(c) for c in columns} for row in rows], out, ensure_ascii=False, indent=2
        )
        out.write("\n")
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_plain(row.get(c)) for c in columns])
    elif fmt == "paths":
        for row in rows:
            out.write(f"{row['uri']}\n")
    else:
        _write_table(list(rows), columns, out)


def _plain(value: Any) -> Any:
    return "" if value is None else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    # A file name may hold a newline or a tab; a table row must stay one line.
    return str(value).translate(_ESCAPES)


_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _write_table(rows: list[dict[str, Any]], columns: Sequence[str], out: IO[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
