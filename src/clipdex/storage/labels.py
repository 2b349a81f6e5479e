"""LabelStore: classification runs and their assignments, kept in the catalog."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from itertools import repeat

import numpy as np
from sqlalchemy import func, insert, select

from ..errors import IndexReadOnlyError
from ..search.labels import LabelSet
from .catalog import Catalog
from .schema import Assignment, ClassifyRun, RunLabel
from .sqlite import CACHE_KIB


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

    def create_run(self, labels: LabelSet, templates: str, model: str) -> int:
        now = time.time()
        with self.catalog._write() as conn:
            run_id = conn.execute(
                insert(ClassifyRun)
                .values(
                    created_at=now,
                    updated_at=now,
                    templates=templates,
                    model=model,
                    labels_key=labels_key(labels, templates, model),
                )
                .returning(ClassifyRun.id)
            ).scalar_one()
            conn.execute(
                insert(RunLabel),
                [{"run_id": run_id, "position": i, "label": n} for i, n in enumerate(labels.names)],
            )
        return int(run_id)

    def labelled_ids(self, run_id: int) -> np.ndarray:
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(Assignment.image_id).where(Assignment.run_id == run_id, Assignment.rank == 1)
            ).scalars()
            return np.fromiter(ids, dtype=np.int64)

    def save(self, run_id: int, columns: Iterable[tuple[np.ndarray, ...]]) -> int:
        """Store assignments in one transaction; `columns` yields equal-length arrays
        (image ids, ranks, label positions, scores, probabilities).

        Uses executemany on the raw sqlite3 connection: a million rows in a few seconds.
        """
        if self.catalog.read_only:
            raise IndexReadOnlyError(f"index folder {self.catalog.folder} is read-only")
        raw = self.engine.raw_connection()
        count = 0
        try:
            cursor = raw.cursor()
            # Random inserts into the label index thrash SQLite's default 2 MB page cache:
            # 256 MB (allocated only as used) makes a million rows about 3x faster.
            cursor.execute("PRAGMA cache_size = -262144")
            cursor.execute("BEGIN IMMEDIATE")
            sql = (
                "INSERT OR REPLACE INTO assignments "
                "(run_id, image_id, rank, position, score, probability) VALUES (?, ?, ?, ?, ?, ?)"
            )
            for ids, ranks, positions, scores, probabilities in columns:
                cursor.executemany(
                    sql,
                    zip(
                        repeat(run_id, len(ids)),
                        ids.tolist(),
                        ranks.tolist(),
                        positions.tolist(),
                        scores.tolist(),
                        probabilities.tolist(),
                        strict=True,
                    ),
                )
                count += len(ids)
            cursor.execute(
                "UPDATE classify_runs SET updated_at = ? WHERE id = ?", (time.time(), run_id)
            )
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.cursor().execute(f"PRAGMA cache_size = {CACHE_KIB}")
            raw.close()
        return count

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
                .where(RunLabel.label == label)
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
            run_id = conn.execute(select(func.max(ClassifyRun.id))).scalar()
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
