"""Decide what changed between a source and the catalog: new, changed, moved, unchanged, gone."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from clipdex.sources import Source
from clipdex.sources.fingerprint import fingerprint, is_content_identity
from clipdex.sources.local import FileEntry
from clipdex.storage.catalog import Catalog
from clipdex.storage.catalog_scan import KnownFile
from clipdex.types import ProgressCallback

#: New or changed files fingerprinted and looked up together.
LOOKUP_BATCH = 1000


@dataclass(frozen=True)
class Reuse:
    """A new or changed file whose content the catalog already holds under `from_id`."""

    entry: FileEntry
    fingerprint: str
    from_id: int


@dataclass
class SyncPlan:
    """The work an index run has to do for one source."""

    to_embed: list[FileEntry] = field(default_factory=list)
    reuse: list[Reuse] = field(default_factory=list)
    listed: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    #: Unchanged images another source brought in, that this source lists too.
    link_ids: list[int] = field(default_factory=list)
    #: Images of this source that it no longer lists (deleted when no other source does).
    unlink_ids: list[int] = field(default_factory=list)


def plan_sync(
    source: Source,
    catalog: Catalog,
    source_id: int | None,
    rebuild: bool = False,
    verify: bool = False,
    on_progress: ProgressCallback | None = None,
) -> SyncPlan:
    """Compare the source's listing (size + mtime) with what the catalog remembers.

    A file whose size and mtime match is unchanged, whether it was embedded or recorded as
    failed (`verify` also compares its content fingerprint). A new or changed file whose
    fingerprint matches a stored image (a move, a copy, a touch) reuses that vector;
    `rebuild` re-embeds everything. Images of this source that the listing no longer has
    are to be unlinked from it; images only other sources list are never touched, even in
    folders this walk skips. If listing fails, SourceError propagates and nothing is
    planned for removal.
    """
    match = not rebuild and catalog.scan.has_fingerprints()
    plan = SyncPlan()
    candidates: list[FileEntry] = []
    visited: set[str] = set()
    unreadable: list[str] = []
    for folder, files in source.folders():
        visited.add(folder)
        if files is None:
            unreadable.append(folder)
            continue
        # Only one folder's rows are in memory at a time (a list's rows are its folder).
        if source.kind == "list":
            known = catalog.scan.known_for_list(source_id, [entry.uri for entry in files])
        else:
            only = source.uri if source.is_file else None
            known = catalog.scan.known_in_folder(folder, source_id, only=only)
        for entry in files:
            plan.listed += 1
            if on_progress and plan.listed % 1000 == 0:
                on_progress("scan", plan.listed, None)
            previous = known.pop(entry.uri, None)
            if previous is None:
                plan.new += 1
            elif rebuild or _changed(previous, entry, verify):
                plan.changed += 1
            else:
                plan.unchanged += 1
                if not previous.linked:
                    plan.link_ids.append(previous.id)
                continue
            if match:
                candidates.append(entry)
                if len(candidates) >= LOOKUP_BATCH:
                    _match(catalog, candidates, plan)
            else:
                plan.to_embed.append(entry)
        unknown = getattr(source, "unknown", set())  # listed, but could not be reached now
        plan.unlink_ids.extend(
            row.id for uri, row in known.items() if row.linked and uri not in unknown
        )
    if candidates:
        _match(catalog, candidates, plan)
    if on_progress:
        on_progress("scan", plan.listed, plan.listed)
    if not source.is_file and source.kind != "list":
        # This source's rows in folders the walk never reached: deleted (or now hidden).
        keep = tuple(os.path.join(f, "") for f in unreadable)
        for image_id, folder in catalog.scan.folders_under(source.prefix, source_id):
            if folder not in visited and not (folder + os.sep).startswith(keep or ("\0",)):
                plan.unlink_ids.append(image_id)
    return plan


def _changed(previous: KnownFile, entry: FileEntry, verify: bool) -> bool:
    if previous.decode == "imported":  # an imported vector: no mtime or fingerprint to compare
        return previous.size != entry.size
    if entry.version is not None:  # an object: its version decides; without one, always
        return not entry.version or previous.fingerprint != entry.stored_fingerprint
    if previous.size != entry.size or previous.mtime_ns != entry.mtime_ns:
        return True
    if verify and previous.fingerprint is not None:
        return fingerprint(entry.uri, entry.size) != previous.fingerprint
    return False


def _match(catalog: Catalog, candidates: list[FileEntry], plan: SyncPlan) -> None:
    """Split candidates into vectors to reuse (by fingerprint) and files to embed."""
    prints = {entry.uri: _content_print(entry) for entry in candidates}
    found = catalog.scan.find_fingerprints([p for p in prints.values() if p is not None])
    for entry in candidates:
        content = prints[entry.uri]
        if content is not None and content in found:
            plan.reuse.append(Reuse(entry, content, found[content]))
        else:
            plan.to_embed.append(entry)
    candidates.clear()


def _content_print(entry: FileEntry) -> str | None:
    """A fingerprint that names the entry's content (the whole file's SHA-256, an object's
    ETag or MD5), or None: a per-url version never lends a vector to another object."""
    if entry.version is None:
        return fingerprint(entry.uri, entry.size)
    return entry.version if is_content_identity(entry.version) else None
