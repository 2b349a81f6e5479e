"""Decide what changed between a source and the catalog: new, changed, unchanged, gone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..storage.catalog import Catalog
from .sources import FileEntry, LocalSource

ProgressCallback = Callable[[str, int, "int | None"], None]


@dataclass
class SyncPlan:
    """The work an index run has to do for one source."""

    to_embed: list[FileEntry] = field(default_factory=list)
    listed: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed_ids: list[int] = field(default_factory=list)


def plan_sync(
    source: LocalSource,
    catalog: Catalog,
    rebuild: bool = False,
    on_progress: ProgressCallback | None = None,
) -> SyncPlan:
    """Compare the source's listing (size + mtime) with what the catalog remembers.

    A file whose size and mtime match is unchanged, whether it was embedded or recorded as
    failed; `rebuild` re-embeds everything. Files the catalog knows under the source but
    the listing no longer has are to be removed. If listing fails, SourceError propagates
    and nothing is planned for removal.
    """
    known = catalog.known_files(source.prefix, exact=source.is_file)
    plan = SyncPlan()
    listed = 0
    for entry in source.entries():
        listed += 1
        if on_progress and listed % 1000 == 0:
            on_progress("scan", listed, None)
        previous = known.pop(entry.uri, None)
        if previous is None:
            plan.new += 1
            plan.to_embed.append(entry)
        elif rebuild or previous.size != entry.size or previous.mtime_ns != entry.mtime_ns:
            plan.changed += 1
            plan.to_embed.append(entry)
        else:
            plan.unchanged += 1
    if on_progress:
        on_progress("scan", listed, listed)
    plan.listed = listed
    plan.removed_ids = [row.id for row in known.values()]
    return plan
