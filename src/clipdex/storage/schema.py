"""The catalog's tables (SQLAlchemy 2.0 declarative models) and its migrations.

`SCHEMA_VERSION` is stored in the `meta` table. A catalog written by an older clipdex is
upgraded step by step through `MIGRATIONS`; one written by a newer clipdex is refused.
"""

from __future__ import annotations

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

SCHEMA_VERSION = 1


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
    kind: Mapped[str] = mapped_column(String)  # "folder" or "file"
    added_at: Mapped[float] = mapped_column(Float)
    indexed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Image(Base):
    """One image file. Its integer id is its id in the FAISS index."""

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_source", "source_id"),
        Index("ix_images_seq", "seq"),
        {"sqlite_autoincrement": True},  # ids are never reused, so FAISS never confuses two images
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    uri: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    format: Mapped[str | None] = mapped_column(String, nullable=True)
    status: Mapped[str] = mapped_column(String)  # "ok" or "failed"
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    seq: Mapped[int] = mapped_column(Integer)  # change sequence of the last write
    indexed_at: Mapped[float] = mapped_column(Float)


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


#: MIGRATIONS[n] upgrades a catalog from schema version n to n + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}
