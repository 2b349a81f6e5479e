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


def escape_control(text: Any) -> str:
    """`text` safe for a terminal line: control characters (C0, DEL, C1) and the Unicode
    line and paragraph separators written as escapes.

    A file name, folder or label may hold a newline (forging a line of output) or an ESC
    sequence (reaching the terminal); human-readable output shows `\\n`, `\\x1b` instead.
    JSON, CSV and `--format paths` print names exactly.
    """
    return str(text).translate(_ESCAPES)


_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return escape_control(value)


def _write_table(rows: list[dict[str, Any]], columns: Sequence[str], out: IO[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
