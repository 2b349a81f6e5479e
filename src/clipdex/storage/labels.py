"""LabelStore: classification runs and their assignments, kept in the catalog."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from itertools import repeat

import numpy as np
from sqlalchemy import exists, func, select

from clipdex.storage.catalog import Catalog
from clipdex.storage.db import raw_write
from clipdex.storage.schema import Assignment, ClassifyRun, RunLabel
from clipdex.types import LabelSet


def labels_key(labels: LabelSet, templates: str, model: str) -> str:
    """Identifies a classification setup: same labels, prompts, templates and model."""
    payload = json.dumps([labels.names, labels.prompts, templates, model], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class LabelStore:
    """Reads and writes classification results through the catalog's engine."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.engine = catalog.engine

    def find_run(self, key: str) -> int | None:
        """The latest run with this exact setup."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(ClassifyRun.id)
                .where(ClassifyRun.labels_key == key)
                .order_by(ClassifyRun.id.desc())
                .limit(1)
            ).scalar()

    def labelled_ids(self, run_id: int) -> np.ndarray:
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(Assignment.image_id).where(Assignment.run_id == run_id, Assignment.rank == 1)
            ).scalars()
            return np.fromiter(ids, dtype=np.int64)

    def save(
        self,
        labels: LabelSet,
        templates: str,
        model: str,
        columns: Iterable[tuple[np.ndarray, ...]],
        *,
        run_id: int | None = None,
        as_of_seq: int | None = None,
    ) -> tuple[int | None, int]:
        """Create a run (or extend `run_id`) and store its assignments, all in ONE
        transaction: a run is visible complete or not at all, even after a kill.

        `columns` yields equal-length arrays (image ids, ranks, label positions, scores,
        probabilities). `as_of_seq` is the catalog change sequence the scored vectors
        reflect: assignments of images deleted or rewritten since then are skipped.
        Returns (run id, assignments stored); nothing is written when none is left.
        Uses executemany on the raw sqlite3 connection: a million rows in a few seconds.
        """
        count = 0
        # Random inserts into the label index thrash SQLite's default 2 MB page cache:
        # 256 MB (allocated only as used) makes a million rows about 3x faster.
        # BEGIN IMMEDIATE: no image can be deleted or rewritten meanwhile.
        with raw_write(self.catalog, cache_kib=262144) as scope:
            cursor = scope.cursor
            stale = _changed_since(cursor, as_of_seq)
            new_id = _open_run(cursor, run_id, labels, templates, model)
            sql = (
                "INSERT OR REPLACE INTO assignments "
                "(run_id, image_id, rank, position, score, probability) VALUES (?, ?, ?, ?, ?, ?)"
            )
            for ids, ranks, positions, scores, probabilities in columns:
                if len(stale):
                    keep = ~np.isin(ids, stale)
                    ids, ranks, positions = ids[keep], ranks[keep], positions[keep]
                    scores, probabilities = scores[keep], probabilities[keep]
                cursor.executemany(
                    sql,
                    zip(
                        repeat(new_id, len(ids)),
                        ids.tolist(),
                        ranks.tolist(),
                        positions.tolist(),
                        scores.tolist(),
                        probabilities.tolist(),
                        strict=True,
                    ),
                )
                count += len(ids)
            if count == 0:
                scope.discard()
                return run_id, 0
        return new_id, count

    def run_labels(self, run_id: int) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(RunLabel.label)
                    .where(RunLabel.run_id == run_id)
                    .order_by(RunLabel.position)
                ).scalars()
            )

    def ids_with_label(self, label: str) -> np.ndarray:
        """Images whose top label is `label` in the latest run that has that label."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(RunLabel.run_id, RunLabel.position)
                .where(RunLabel.label == label, _has_assignments(RunLabel.run_id))
                .order_by(RunLabel.run_id.desc())
                .limit(1)
            ).first()
            if found is None:
                return np.zeros(0, dtype=np.int64)
            ids = conn.execute(
                select(Assignment.image_id).where(
                    Assignment.run_id == found.run_id,
                    Assignment.position == found.position,
                    Assignment.rank == 1,
                )
            ).scalars()
            return np.fromiter(ids, dtype=np.int64)

    def latest_counts(self) -> tuple[int | None, list[tuple[str, int]]]:
        """(run id, [(label, images whose top label it is)]) for the latest run."""
        with self.engine.connect() as conn:
            run_id = conn.execute(
                select(func.max(ClassifyRun.id)).where(_has_assignments(ClassifyRun.id))
            ).scalar()
            if run_id is None:
                return None, []
            counts = dict(
                conn.execute(
                    select(Assignment.position, func.count())
                    .where(Assignment.run_id == run_id, Assignment.rank == 1)
                    .group_by(Assignment.position)
                ).all()
            )
        names = self.run_labels(run_id)
        rows = [(name, counts.get(i, 0)) for i, name in enumerate(names)]
        if counts.get(-1):
            rows.append(("(below threshold)", counts[-1]))
        return run_id, rows


def _has_assignments(run_id_column):
    """Runs that hold assignments: an older clipdex killed mid-save left empty runs behind
    (now a run and its assignments are one transaction); they must not hide earlier ones."""
    return exists().where(Assignment.run_id == run_id_column)


def _changed_since(cursor: sqlite3.Cursor, seq: int | None) -> np.ndarray:
    """Ids deleted or rewritten after change sequence `seq` (sorted); none if it is current."""
    if seq is None:
        return np.zeros(0, dtype=np.int64)
    row = cursor.execute("SELECT value FROM meta WHERE key = 'change_seq'").fetchone()
    if int(row[0] if row else 0) == seq:
        return np.zeros(0, dtype=np.int64)
    deleted = cursor.execute("SELECT image_id FROM tombstones WHERE seq > ?", (seq,)).fetchall()
    rewritten = cursor.execute("SELECT id FROM images WHERE seq > ?", (seq,)).fetchall()
    return np.unique(np.array([r[0] for r in deleted + rewritten], dtype=np.int64))


def _open_run(
    cursor: sqlite3.Cursor, run_id: int | None, labels: LabelSet, templates: str, model: str
) -> int:
    """Touch run `run_id`, or (absent, or deleted meanwhile by a model reset) create one."""
    now = time.time()
    if run_id is not None:
        cursor.execute("UPDATE classify_runs SET updated_at = ? WHERE id = ?", (now, run_id))
        if cursor.rowcount == 1:
            return run_id
    cursor.execute(
        "INSERT INTO classify_runs (created_at, updated_at, templates, model, labels_key)"
        " VALUES (?, ?, ?, ?, ?)",
        (now, now, templates, model, labels_key(labels, templates, model)),
    )
    new_id = int(cursor.lastrowid)
    cursor.executemany(
        "INSERT INTO run_labels (run_id, position, label) VALUES (?, ?, ?)",
        [(new_id, i, name) for i, name in enumerate(labels.names)],
    )
    return new_id
