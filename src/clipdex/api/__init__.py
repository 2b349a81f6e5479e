"""The Python API: open an index, add sources, search, classify, inspect.

index.py holds the Index facade; reader.py its catalog and vectors, caught up by change
sequence; models.py the model it keeps loaded; status.py what status reports; folder.py
the index folder (default, writability); sources.py sources as a user names them.
No click, no printing, no exits: errors are `clipdex.errors` types.
"""

from __future__ import annotations

from clipdex.api.folder import DEFAULT_INDEX_DIR, default_index_dir
from clipdex.api.index import Index, open_index
from clipdex.api.status import IndexStatus, SourceStatus

__all__ = [
    "DEFAULT_INDEX_DIR",
    "Index",
    "IndexStatus",
    "SourceStatus",
    "default_index_dir",
    "open_index",
]
