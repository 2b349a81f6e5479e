"""Defects found by the hostile pass over the merged branches (query algebra, filters,
query cache, serve, Ray, export/import, ANN): each pinned as a user would notice it."""

from __future__ import annotations

import pytest

from clipdex.errors import QueryError
from clipdex.search.algebra import parse_term
from conftest import TINY, make_images, run_cli

TOO_BIG = [str(2**63), "99999999999999999999", str(-(2**63) - 1)]


@pytest.mark.parametrize("image_id", TOO_BIG)
def test_an_id_beyond_sqlites_integers_is_a_query_error(image_id):
    with pytest.raises(QueryError, match="no indexed image has id"):
        parse_term(image_id, "like")


@pytest.mark.slow
def test_search_like_a_huge_id_is_one_line_not_a_traceback(tmp_path, runner):
    make_images(tmp_path / "p", 3)
    run_cli(runner, "index", str(tmp_path / "p"), *TINY)
    for image_id in TOO_BIG:
        result = run_cli(runner, "search", "x", "--like", image_id, expect=1)
        assert result.output.strip().splitlines() == [
            f"Error: no indexed image has id {int(image_id)} (deleted, failed or unknown)"
        ]
