"""Untrusted names (files, folders, labels) never forge lines or reach the terminal as
control sequences in human-readable output; JSON and CSV keep them exact."""

from __future__ import annotations

import csv
import io
import json

import pytest

from clipdex.cli.output import write_rows
from conftest import TINY, make_images, run_cli

EVIL = "bad\nimages:   999 indexed\x1b[2J\x07\r\x7f\x9b"
ESCAPED = "bad\\nimages:   999 indexed\\x1b[2J\\x07\\r\\x7f\\x9b"


def assert_clean(text: str) -> None:
    """No control character but the line ends; no forged 'images:' line."""
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)
    assert not any(line.startswith("images:   999") for line in text.splitlines()), text


def test_escape_control_covers_c0_del_and_c1():
    from clipdex.cli.output import escape_control

    assert escape_control(EVIL) == ESCAPED
    assert escape_control("tab\there\x00") == "tab\\there\\x00"
    assert escape_control("naïve café ünïcode ✓") == "naïve café ünïcode ✓"


def test_table_escapes_but_json_csv_and_paths_stay_exact():
    rows = [{"uri": f"/p/{EVIL}.png", "score": 0.5}]
    table = io.StringIO()
    write_rows(rows, ("uri", "score"), "table", table)
    assert_clean(table.getvalue())
    assert ESCAPED in table.getvalue() and len(table.getvalue().splitlines()) == 2
    exact = {
        "json": lambda text: json.loads(text)[0]["uri"],
        "jsonl": lambda text: json.loads(text)["uri"],
        "csv": lambda text: next(csv.DictReader(io.StringIO(text)))["uri"],
        "paths": lambda text: text.removesuffix("\n"),
    }
    for fmt, read in exact.items():
        out = io.StringIO()
        write_rows(rows, ("uri", "score"), fmt, out)
        assert read(out.getvalue()) == f"/p/{EVIL}.png", fmt


@pytest.fixture
def evil_index(runner, tmp_path):
    """An index of a folder whose name and files carry control characters."""
    folder = tmp_path / "ph\x1b]0;owned\x07otos"
    make_images(folder, 3)
    (folder / f"{EVIL}.jpg").write_bytes(b"not an image")
    (folder / "img0001.jpg").rename(folder / f"good{EVIL}.jpg")
    index = run_cli(runner, "index", str(folder), *TINY)
    assert_clean(index.stdout)
    return folder


def test_status_escapes_sources_failures_and_labels(runner, evil_index):
    run_cli(runner, "classify", "--labels", "plain,evil\x1b[31m\nlabel", "--templates", "none")
    out = run_cli(runner, "status").stdout
    assert_clean(out)
    assert f"  {evil_index.parent}/ph\\x1b]0;owned\\x07otos" in out
    assert f"{ESCAPED}.jpg: " in out
    assert "  evil\\x1b[31m\\nlabel: " in out
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert data["sources"][0]["uri"] == str(evil_index)
    assert any(f["uri"] == str(evil_index / f"{EVIL}.jpg") for f in data["failures"])


def test_search_and_classify_tables_escape(runner, evil_index):
    found = run_cli(runner, "search", "anything", "-k", "10").stdout
    assert_clean(found)
    assert f"good{ESCAPED}.jpg" in found and len(found.splitlines()) == 4
    labelled = run_cli(
        runner, "classify", "--labels", "plain,evil\x1b[31m", "--templates", "none", "--no-save"
    ).stdout
    assert_clean(labelled)
    assert len(labelled.splitlines()) == 4
    paths = run_cli(runner, "search", "anything", "-k", "10", "--format", "paths").stdout
    assert str(evil_index / f"good{EVIL}.jpg") in paths  # paths print raw, by design


def test_error_lines_escape(runner, evil_index):
    result = run_cli(runner, "search", "x", "--label", "no\x1b[2Jsuch\nlabel", expect=1)
    assert_clean(result.stderr)
    assert result.stderr.strip().splitlines() == [
        "Error: no image is labelled 'no\\x1b[2Jsuch\\nlabel'; "
        "label images first with `clipdex classify`"
    ]
