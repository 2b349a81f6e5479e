"""Reads the server needs that the catalog's hot paths do not: one image's details, its
labels in every classification run, every run with its label counts, ids of uris."""

from __future__ import annotations

from dataclasses import dataclass

from clipdex.storage.catalog import Catalog
from clipdex.storage.db import raw_read


@dataclass(frozen=True)
class ImageDetails:
    """One catalog row as a viewer shows it; `seq` changes whenever the image is rewritten."""

    id: int
    uri: str
    size: int
    width: int | None
    height: int | None
    format: str | None
    status: str
    seq: int


@dataclass(frozen=True)
class ImageLabel:
    run: int
    label: str | None  # None: below the run's threshold
    score: float
    probability: float
    rank: int


@dataclass(frozen=True)
class RunSummary:
    id: int
    created_at: float
    templates: str
    #: (label, images whose top label it is), in the run's label order.
    labels: list[tuple[str, int]]


def image_details(catalog: Catalog, image_id: int) -> ImageDetails | None:
    """The row of image `image_id`, or None when there is no such image."""
    with raw_read(catalog.engine) as cursor:
        row = cursor.execute(
            "SELECT id, uri, size, width, height, format, status, seq FROM images WHERE id = ?",
            (image_id,),
        ).fetchone()
    return ImageDetails(*row) if row else None


def image_labels(catalog: Catalog, image_id: int) -> list[ImageLabel]:
    """The image's labels in every run that holds it, newest run first, best rank first."""
    with raw_read(catalog.engine) as cursor:
        rows = cursor.execute(
            "SELECT a.run_id, l.label, a.score, a.probability, a.rank FROM assignments a "
            "LEFT JOIN run_labels l ON l.run_id = a.run_id AND l.position = a.position "
            "WHERE a.image_id = ? ORDER BY a.run_id DESC, a.rank",
            (image_id,),
        ).fetchall()
    return [ImageLabel(*row) for row in rows]


def runs_with_counts(catalog: Catalog) -> list[RunSummary]:
    """Every classification run that holds assignments, newest first, with how many
    images have each label as their top label."""
    with raw_read(catalog.engine, snapshot=True) as cursor:
        runs = cursor.execute(
            "SELECT r.id, r.created_at, r.templates FROM classify_runs r WHERE EXISTS "
            "(SELECT 1 FROM assignments a WHERE a.run_id = r.id) ORDER BY r.id DESC"
        ).fetchall()
        out = []
        for run_id, created_at, templates in runs:
            counts = dict(
                cursor.execute(
                    "SELECT position, COUNT(*) FROM assignments WHERE run_id = ? AND rank = 1 "
                    "GROUP BY position",
                    (run_id,),
                ).fetchall()
            )
            names = cursor.execute(
                "SELECT position, label FROM run_labels WHERE run_id = ? ORDER BY position",
                (run_id,),
            ).fetchall()
            labels = [(name, counts.get(position, 0)) for position, name in names]
            out.append(RunSummary(run_id, created_at, templates, labels))
    return out


def run_labels(catalog: Catalog, run_id: int) -> tuple[str, list[str]] | None:
    """(templates, label names in order) of a run, or None when there is no such run."""
    with raw_read(catalog.engine, snapshot=True) as cursor:
        row = cursor.execute("SELECT templates FROM classify_runs WHERE id = ?", (run_id,))
        found = row.fetchone()
        if found is None:
            return None
        names = cursor.execute(
            "SELECT label FROM run_labels WHERE run_id = ? ORDER BY position", (run_id,)
        ).fetchall()
    return found[0], [name for (name,) in names]


def ids_of_uris(catalog: Catalog, uris: list[str]) -> dict[str, int]:
    """uri -> image id for the uris the catalog holds."""
    out: dict[str, int] = {}
    with raw_read(catalog.engine) as cursor:
        for start in range(0, len(uris), 500):
            chunk = uris[start : start + 500]
            marks = ",".join("?" * len(chunk))
            cursor.execute(f"SELECT uri, id FROM images WHERE uri IN ({marks})", chunk)
            out.update(cursor.fetchall())
    return out
