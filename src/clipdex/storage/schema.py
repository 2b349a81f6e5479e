"""The catalog's tables (SQLAlchemy 2.0 declarative models) and its migrations.

`SCHEMA_VERSION` is stored in the `meta` table. A catalog written by an older clipdex is
upgraded step by step through `MIGRATIONS`; one written by a newer clipdex is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 6


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key-value facts about the index: schema version, model identity, change sequence."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Source(Base):
    """A folder (or single file) that was indexed; its images live under its uri."""

    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String)  # folder, file, bucket, object, list
    added_at: Mapped[float] = mapped_column(Float)
    options: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: endpoint etc.
    indexed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Image(Base):
    """One image file. Its integer id is its id in the FAISS index.

    One uri is one row, whichever sources list it: `image_sources` links it to each of
    them, and `source_id` is one of those (the first; where its bytes are fetched from).
    """

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_source", "source_id"),
        Index("ix_images_seq", "seq"),
        Index("ix_images_fingerprint", "fingerprint"),
        Index("ix_images_folder", "folder"),
        {"sqlite_autoincrement": True},  # ids are never reused, so FAISS never confuses two images
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    uri: Mapped[str] = mapped_column(Text, unique=True)
    folder: Mapped[str] = mapped_column(Text)  # the uri's parent: scans go folder by folder
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    format: Mapped[str | None] = mapped_column(String, nullable=True)
    #: size + SHA-256 of the whole file: finds moved and copied files.
    fingerprint: Mapped[str | None] = mapped_column(String, nullable=True)
    status: Mapped[str] = mapped_column(String)  # "ok" or "failed"
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    seq: Mapped[int] = mapped_column(Integer)  # change sequence of the last write
    indexed_at: Mapped[float] = mapped_column(Float)
    #: How the model saw it: "exact" (full decode), "draft" (decoded smaller), "imported"
    #: (the vector came from an export, not from this clipdex); None: failed, or embedded
    #: before schema 4.
    decode: Mapped[str | None] = mapped_column(String, nullable=True)
    #: The precision the model ran in ("fp32", "bf16", "fp16", "int8"); None: failed,
    #: imported, or embedded before schema 6.
    precision: Mapped[str | None] = mapped_column(String, nullable=True)


class ImageSource(Base):
    """An image listed by a source. The image is deleted when its last link goes."""

    __tablename__ = "image_sources"
    __table_args__ = (
        Index("ix_image_sources_source", "source_id"),
        {"sqlite_with_rowid": False},
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    source_id: Mapped[int] = mapped_column(
        ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True
    )


class Vector(Base):
    """An image's L2-normalised float32 vector, little-endian bytes."""

    __tablename__ = "vectors"
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Tombstone(Base):
    """An image id that was deleted, and the change sequence that deleted it."""

    __tablename__ = "tombstones"
    image_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, index=True)


class ClassifyRun(Base):
    """One `clipdex classify`: its label set, templates and model."""

    __tablename__ = "classify_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    templates: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    labels_key: Mapped[str] = mapped_column(Text, index=True)  # sha256 of labels + prompts


class RunLabel(Base):
    """The labels of a run, by position."""

    __tablename__ = "run_labels"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("classify_runs.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(Text)


class Assignment(Base):
    """An image's rank-th nearest label in a run, with its cosine score and probability.

    WITHOUT ROWID, keyed by image first: the key is the table (one b-tree, not two), a
    million rows insert in id order, and deleting an image's rows is a key-prefix lookup.
    """

    __tablename__ = "assignments"
    __table_args__ = (
        Index("ix_assignments_label", "run_id", "position"),
        {"sqlite_with_rowid": False},
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    run_id: Mapped[int] = mapped_column(
        ForeignKey("classify_runs.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)  # -1: below the run's threshold
    score: Mapped[float] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)


class PhotoMeta(Base):
    """What a photo says about itself (EXIF), read once per image content.

    A row exists once the image's metadata was read (even when it had none), so the next
    run fills in images indexed before schema 5 without embedding them again.
    """

    __tablename__ = "photo_meta"
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    #: Capture time as a UTC epoch; the camera's local time when it recorded no offset.
    taken_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    #: Capture time as the photo wrote it, ISO 8601, with its offset when it had one.
    taken_local: Mapped[str | None] = mapped_column(String, nullable=True)
    camera: Mapped[str | None] = mapped_column(Text, nullable=True)  # "make model"
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    orientation: Mapped[int | None] = mapped_column(Integer, nullable=True)  # EXIF 1-8


class QueryVector(Base):
    """A text query's vector under one model: a repeated query skips the model."""

    __tablename__ = "query_vectors"
    #: sha256 of the model identity and the query text.
    key: Mapped[str] = mapped_column(String, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    used_at: Mapped[float] = mapped_column(Float, index=True)


def _add_classification_and_fingerprints(conn: Connection) -> None:
    """Version 2: classification tables; a content fingerprint and folder per image."""
    Base.metadata.create_all(
        conn, tables=[ClassifyRun.__table__, RunLabel.__table__, Assignment.__table__]
    )
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN fingerprint VARCHAR")
    conn.exec_driver_sql("CREATE INDEX ix_images_fingerprint ON images (fingerprint)")
    conn.exec_driver_sql("ALTER TABLE sources ADD COLUMN options TEXT")
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN folder TEXT NOT NULL DEFAULT ''")
    rows = conn.exec_driver_sql("SELECT id, uri FROM images").fetchall()
    conn.exec_driver_sql(
        "UPDATE images SET folder = ? WHERE id = ?",
        [(os.path.dirname(uri), image_id) for image_id, uri in rows],
    )
    conn.exec_driver_sql("CREATE INDEX ix_images_folder ON images (folder)")


def _add_image_sources(conn: Connection) -> None:
    """Version 3: an image may belong to several sources (a folder, a subfolder, a list)."""
    Base.metadata.create_all(conn, tables=[ImageSource.__table__])
    conn.exec_driver_sql(
        "INSERT OR IGNORE INTO image_sources (image_id, source_id) SELECT id, source_id FROM images"
    )


def _add_decode(conn: Connection) -> None:
    """Version 4: whether an image was embedded from its full decode or a smaller one."""
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN decode VARCHAR")


def _add_photo_meta_and_query_vectors(conn: Connection) -> None:
    """Version 5: photo metadata (EXIF) per image; cached text-query vectors."""
    Base.metadata.create_all(conn, tables=[PhotoMeta.__table__, QueryVector.__table__])


def _add_precision(conn: Connection) -> None:
    """Version 6: the precision each image was embedded in (int8 may mix with fp32).
    Idempotent, as create_all is: a catalog downgraded by hand may have the column."""
    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(images)")}
    if "precision" not in columns:
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN precision VARCHAR")


#: MIGRATIONS[n] upgrades a catalog from schema version n to n + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _add_classification_and_fingerprints,
    2: _add_image_sources,
    3: _add_decode,
    4: _add_photo_meta_and_query_vectors,
    5: _add_precision,
}
