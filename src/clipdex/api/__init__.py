"""The Python API: open an index, add sources, search, classify, inspect.

No click, no printing, no exits: errors are `clipdex.errors` types.
"""

from __future__ import annotations

from clipdex.api.index import (
    DEFAULT_INDEX_DIR,
    Index,
    IndexStatus,
    SourceStatus,
    default_index_dir,
    open_index,
)

__all__ = [
    "DEFAULT_INDEX_DIR",
    "Index",
    "IndexStatus",
    "SourceStatus",
    "default_index_dir",
    "open_index",
]
