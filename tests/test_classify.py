"""Zero-shot classification: label vectors, assignment, per-label lists, persistence, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import clipdex
from clipdex.classify.runs import build_label_matrix
from clipdex.classify.templates import load_templates
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec
from clipdex.samples import COLOURS, SHAPES, write_samples
from clipdex.types import LabelSet
from conftest import TINY, make_images, run_cli
from test_invariants import stored

LABELS = [f"{c} {s}" for c in COLOURS for s in SHAPES][:50]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few hundred generated images, indexed once with clipdex-tiny in fp32."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("classify")
    write_samples(root / "samples", 300, size=64)
    index = root / "index"
    run_cli(
        CliRunner(),
        "index",
        str(root / "samples"),
        "--index",
        str(index),
        *TINY,
        "--precision",
        "fp32",
    )
    return index


def cli(runner, index, *args, expect=0):
    precision = ["--precision", "fp32"] if args[0] != "status" else []
    return run_cli(runner, *args, "--index", str(index), *precision, expect=expect)


def rows_of(runner, index, *args):
    return json.loads(cli(runner, index, *args).stdout)


def reference_classifier(names, templates) -> np.ndarray:
    """open_clip's own build_zero_shot_classifier over the same model, (labels x dim)."""
    from open_clip import build_zero_shot_classifier

    embedder = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    weights = build_zero_shot_classifier(
        embedder.model, embedder.tokenizer, names, templates, num_classes_per_batch=7
    )
    return weights.T.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("templates", ["openai", "simple", "none"])
def test_label_vectors_equal_build_zero_shot_classifier(templates):
    names = LABELS[:12]  # openai: 960 prompts, two flushes of <= 512, label 6 split by them
    embedder = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    _, ours = build_label_matrix(embedder, LabelSet(names), templates)
    _, template_list = load_templates(templates)
    theirs = reference_classifier(names, template_list)
    cosines = np.sum(ours * theirs, axis=1)
    assert cosines.min() >= 0.9999


def test_every_prediction_equals_numpy_argmax(runner, corpus):
    out = cli(
        runner,
        corpus,
        "classify",
        "--labels",
        ",".join(LABELS),
        "--templates",
        "simple",
        "--format",
        "json",
        "--no-save",
    ).stdout
    rows = json.loads(out)
    assert len(rows) == 300
    vectors = stored(corpus)
    uris = list(vectors)
    matrix = np.stack([vectors[u] for u in uris])
    embedder = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    _, classifier = build_label_matrix(embedder, LabelSet(LABELS), "simple")
    logits = matrix @ classifier.T
    expected = {u: LABELS[i] for u, i in zip(uris, logits.argmax(axis=1), strict=True)}
    got = {row["uri"]: row["label"] for row in rows}
    assert got == expected  # 100% agreement
    scale = embedder.logit_scale
    softmax = torch.softmax(torch.from_numpy(logits * scale), dim=1).numpy()
    for row in rows[:50]:
        n = uris.index(row["uri"])
        assert row["score"] == pytest.approx(logits[n].max(), abs=1e-5)
        assert row["probability"] == pytest.approx(softmax[n].max(), abs=1e-5)


def test_top_n_and_threshold(runner, corpus):
    rows = rows_of(
        runner,
        corpus,
        "classify",
        "--labels",
        "a,b,c,d",
        "--top",
        "3",
        "--templates",
        "none",
        "--format",
        "json",
        "--no-save",
    )
    assert len(rows) == 900
    first = [r for r in rows if r["uri"] == rows[0]["uri"]]
    assert [r["rank"] for r in first] == [1, 2, 3]
    assert first[0]["score"] >= first[1]["score"] >= first[2]["score"]
    assert sum(r["probability"] for r in first) <= 1.0 + 1e-6
    cut = np.median([r["score"] for r in rows if r["rank"] == 1])
    rows = rows_of(
        runner,
        corpus,
        "classify",
        "--labels",
        "a,b,c,d",
        "--templates",
        "none",
        "--threshold",
        str(cut),
        "--format",
        "json",
        "--no-save",
    )
    unlabelled = [r for r in rows if r["label"] is None]
    assert 100 <= len(unlabelled) <= 200 and all(r["score"] < cut for r in unlabelled)


def test_per_label_equals_brute_force_top_k(runner, corpus):
    names = ["red circle", "blue square", "green star"]
    rows = rows_of(
        runner,
        corpus,
        "classify",
        "--labels",
        ",".join(names),
        "--per-label",
        "7",
        "--format",
        "json",
    )
    vectors = stored(corpus)
    uris = list(vectors)
    matrix = np.stack([vectors[u] for u in uris])
    embedder = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    _, classifier = build_label_matrix(embedder, LabelSet(names), "openai")
    for position, name in enumerate(names):
        expected = [uris[i] for i in np.argsort(-(matrix @ classifier[position]))[:7]]
        got = [r["uri"] for r in rows if r["label"] == name]
        assert got == expected


def test_saved_run_round_trips_through_search_label_and_status(runner, corpus):
    labels = "kestrel,osprey,falcon"
    rows = json.loads(
        cli(runner, corpus, "classify", "--labels", labels, "--format", "json").stdout
    )
    osprey = {r["uri"] for r in rows if r["label"] == "osprey"}
    assert osprey, "the tiny model put no image under 'osprey'; pick other names"
    hits = rows_of(
        runner, corpus, "search", "anything", "--label", "osprey", "-k", "500", "--format", "json"
    )
    assert {h["uri"] for h in hits} == osprey
    status = json.loads(cli(runner, corpus, "status", "--format", "json").stdout)
    counts = status["label_counts"]
    assert counts["osprey"] == len(osprey) and sum(counts.values()) == 300


@pytest.mark.slow
def test_only_new_classifies_only_images_added_since(runner, tmp_path, index_dir):
    folder = tmp_path / "p"
    make_images(folder, 20)
    run_cli(runner, "index", str(folder), *TINY)
    first = run_cli(runner, "classify", "--labels", "x,y", "--format", "jsonl")
    assert len(first.stdout.splitlines()) == 20
    make_images(folder, 5, seed=3, prefix="later")
    run_cli(runner, "index", str(folder))
    again = run_cli(runner, "classify", "--labels", "x,y", "--only-new", "--format", "jsonl")
    new_rows = [json.loads(line) for line in again.stdout.splitlines()]
    assert len(new_rows) == 5 and all("later" in r["uri"] for r in new_rows)
    assert "saved as run 1" in again.stderr
    status = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert sum(status["label_counts"].values()) == 25


def test_out_file_csv_and_labels_file_with_own_prompts(runner, corpus, tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# animals\n\ncat\ndog: a photo of a dog | a dog outside\n")
    out = tmp_path / "labels.csv"
    cli(
        runner,
        corpus,
        "classify",
        "--labels-file",
        str(labels_file),
        "--out",
        str(out),
        "--no-save",
    )
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["uri", "label", "score", "probability", "rank"]
    assert len(rows) == 300 and {r["label"] for r in rows} <= {"cat", "dog"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "labels.txt"]


def test_label_with_own_prompts_uses_exactly_them():
    embedder = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    labels = LabelSet(["dog"], {"dog": ["a photo of a dog", "a dog outside"]})
    _, matrix = build_label_matrix(embedder, labels, "openai")
    texts = embedder.encode_texts(["a photo of a dog", "a dog outside"])
    expected = texts.mean(axis=0) / np.linalg.norm(texts.mean(axis=0))
    np.testing.assert_allclose(matrix[0], expected, atol=1e-6)


def test_python_api(corpus):
    from clipdex.classify.labels import parse_labels
    from clipdex.classify.runs import ClassifyOptions

    with clipdex.open_index(corpus) as index:
        result = index.classify(parse_labels("cat,dog"), ClassifyOptions(save=False))
        records = list(result.records(index.catalog))
    assert len(records) == 300 and result.run_id is None
    assert set(records[0]) == {"id", "uri", "label", "score", "probability", "rank"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", ""], "no labels given"),
        (["--labels", "cat,,dog"], "blank label"),
        (["--labels", "cat, dog,cat"], "duplicate labels in --labels: cat"),
        (["--labels-file", "/no/such/labels.txt"], "labels file not found"),
        (["--labels", "cat", "--templates", "fancy"], "unknown template set 'fancy'"),
    ],
)
def test_bad_labels_and_templates(runner, corpus, args, message):
    result = cli(runner, corpus, "classify", *args, expect=1)
    assert message in result.stderr and "Traceback" not in result.output


def test_bad_files_and_counts(runner, corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    assert (
        "has no labels"
        in cli(runner, corpus, "classify", "--labels-file", str(empty), expect=1).stderr
    )
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of a thing\n")
    assert (
        "lacks {}"
        in cli(
            runner, corpus, "classify", "--labels", "a", "--templates", str(templates), expect=1
        ).stderr
    )
    for flag in ("--top", "--per-label"):
        result = cli(runner, corpus, "classify", "--labels", "a", flag, "0", expect=2)
        assert f"Invalid value for '{flag}'" in result.stderr
    both = cli(runner, corpus, "classify", expect=2)
    assert "exactly one of --labels or --labels-file" in both.stderr


def test_classifying_an_empty_index(runner, tmp_path, index_dir):
    folder = tmp_path / "p"
    paths = make_images(folder, 2)
    run_cli(runner, "index", str(folder), *TINY)
    for path in paths:
        path.unlink()
    run_cli(runner, "index", str(folder), "--allow-empty")
    result = run_cli(runner, "classify", "--labels", "a,b", expect=1)
    assert "no images to classify" in result.stderr
    assert (
        "no images to classify"
        in run_cli(runner, "classify", "--labels", "a", "--per-label", "3", expect=1).stderr
    )
