"""Query algebra (issue 15, part 4): a query is the renormalised weighted sum of its terms'
unit vectors; checked against numpy with the tiny model's own encodings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipdex.api import open_index
from clipdex.errors import QueryError
from clipdex.media.decode import load_image
from clipdex.models.spec import ModelSpec
from clipdex.search.algebra import Term, combine, parse_term, split_weight
from conftest import TINY, make_images, run_cli


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    """An index of 8 generated images under clipdex-tiny, built once for the module (tests
    only read it): (index folder, image paths)."""
    root = tmp_path_factory.mktemp("algebra")
    paths = make_images(root / "photos", 8)
    with open_index(root / "index") as index:
        index.add(root / "photos", model=ModelSpec("clipdex-tiny"))
    return root / "index", paths


def _stored(index) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = zip(*index.catalog.iter_vectors(), strict=True)
    return np.concatenate(ids), np.concatenate(vectors)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_combined_vector_equals_the_weighted_sum_in_numpy(tiny_index):
    folder, paths = tiny_index
    with open_index(folder) as index:
        ids, vectors = _stored(index)
        embedder = index.embedder()
        liked = int(ids[3])
        terms = [
            Term.text("a cat"),
            Term.text("snow", 0.5),
            Term.text("a drawing", -1.0),
            Term.image(paths[5], 2.0),
            Term.like(liked, 0.7),
        ]
        got = combine(terms, index.catalog, embedder)
        texts = embedder.encode_texts(["a cat", "snow", "a drawing"])
        picture = embedder.image_vector(load_image(paths[5])[0])
        want = _unit(
            texts[0] + 0.5 * texts[1] - texts[2] + 2.0 * picture + 0.7 * vectors[ids == liked][0]
        )
        assert abs(np.linalg.norm(got) - 1) < 1e-6
        np.testing.assert_allclose(got, want, atol=1e-5)
        # one text alone is that text's own vector; a weight alone does not change it
        np.testing.assert_allclose(
            combine([Term.text("a cat", 3.0)], index.catalog, embedder), texts[0], atol=1e-6
        )


def test_search_with_terms_ranks_like_numpy_and_leaves_the_liked_image_out(tiny_index):
    folder, _ = tiny_index
    with open_index(folder) as index:
        ids, vectors = _stored(index)
        liked = int(ids[0])
        embedder = index.embedder()
        hits = index.search("a red car", like=liked, terms=[Term.text("blue", -0.5)], k=5)
        texts = embedder.encode_texts(["a red car", "blue"])
        query = _unit(texts[0] + vectors[0] - 0.5 * texts[1])
        scores = vectors @ query
        order = [i for i in np.argsort(-scores) if ids[i] != liked][:5]
        assert [h.id for h in hits] == [int(ids[i]) for i in order]
        np.testing.assert_allclose([h.score for h in hits], scores[order], atol=1e-5)
        assert liked not in {h.id for h in hits}


def test_cli_and_not_and_like_combine(tiny_index, runner):
    folder, _ = tiny_index
    with open_index(folder) as index:
        ids, vectors = _stored(index)
        texts = index.embedder().encode_texts(["a cat", "a drawing", "snow", "time: 12:30"])
    liked = int(ids[2])
    out = run_cli(
        runner,
        "search",
        "--index",
        str(folder),
        "a cat",
        "--not",
        "a drawing",
        "--and",
        "snow:0.5",
        "--like",
        f"{liked}:2",
        "--and",
        "time: 12:30:1",
        "-k",
        "8",
        "--format",
        "json",
    ).stdout
    rows = json.loads(out)
    query = _unit(texts[0] - texts[1] + 0.5 * texts[2] + 2 * vectors[2] + texts[3])
    scores = vectors @ query
    want = [int(ids[i]) for i in np.argsort(-scores) if ids[i] != liked]
    assert [r["id"] for r in rows] == want  # 7: every image but the liked one
    by_id = dict(zip(ids.tolist(), scores.tolist(), strict=True))
    assert all(abs(r["score"] - by_id[r["id"]]) < 1e-5 for r in rows)


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("snow", ("snow", 1.0)),
        ("snow:0.5", ("snow", 0.5)),
        ("snow:2", ("snow", 2.0)),
        ("snow:.25", ("snow", 0.25)),
        ("snow:+3", ("snow", 3.0)),
        ("snow:1e-1", ("snow", 0.1)),
        ("time: 12:30", ("time: 12", 30.0)),  # only the trailing :NUMBER is a weight
        ("time: 12:30:1", ("time: 12:30", 1.0)),
        ("time: 12", ("time: 12", 1.0)),  # a space after the colon: no weight
        ("ratio 16:9 screen", ("ratio 16:9 screen", 1.0)),
        ("a:b", ("a:b", 1.0)),
        ("photo.jpg:", ("photo.jpg:", 1.0)),
    ],
)
def test_only_a_trailing_number_is_a_weight(spec, want):
    assert split_weight(spec) == want


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("snow:0", "must be a positive number"),
        ("snow:-0.5", "must be a positive number"),
        ("snow:1e999", "must be a positive number"),
        (":2", "no term before it"),
        ("  :2", "no term before it"),
    ],
)
def test_bad_weights_are_refused(spec, message):
    with pytest.raises(QueryError, match=message):
        split_weight(spec)


def test_parse_term_kinds_and_signs(tmp_path):
    assert parse_term("a cat:2", subtract=True) == Term.text("a cat", -2.0)
    assert parse_term("12:0.5", "like") == Term.like(12, 0.5)
    assert parse_term(f"{tmp_path}/x.jpg:3", "image") == Term.image(tmp_path / "x.jpg", 3.0)
    with pytest.raises(QueryError, match="whole number"):
        parse_term("abc", "like")
    with pytest.raises(QueryError, match=r"weight .* is zero"):
        Term.text("x", 0.0)
    with pytest.raises(QueryError, match="finite"):
        Term.text("x", float("nan"))
    with pytest.raises(QueryError, match="empty"):
        Term.text("   ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x", "--not", "x"], "cancel out"),
        (["x:1", "--not", "x:1:1"], "cancel out"),  # the positional text is taken whole
        (["--and", "x:2", "--not", "x:2"], "cancel out"),
        (["x", "--and", "snow:0"], "must be a positive number"),
        (["x", "--not", "snow:-1"], "must be a positive number"),
        (["--like", "999999"], "no indexed image has id 999999"),
        (["x", "--like", "abc"], "whole number"),
        (["x", "--image", "missing.jpg:2"], "query image not found: missing.jpg"),
    ],
)
def test_bad_queries_fail_in_one_line(tiny_index, runner, args, message):
    result = run_cli(runner, "search", "--index", str(tiny_index[0]), *args, expect=1)
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_query_needs_a_term(tiny_index, runner):
    result = run_cli(runner, "search", "--index", str(tiny_index[0]), expect=2)
    assert "give a QUERY text" in result.output


@pytest.mark.slow
def test_like_alone_still_needs_no_model(tmp_path, index_dir, runner):
    make_images(tmp_path / "p", 4)
    run_cli(runner, "index", str(tmp_path / "p"), *TINY)
    with open_index(index_dir) as index:
        first = int(next(index.catalog.iter_vectors())[0][0])
        hits = index.search(like=first, k=3)
        assert index.loaded_model is None
    assert first not in {h.id for h in hits} and len(hits) == 3
