"""clipdex: zero-shot image retrieval with CLIP, FAISS and SQLite.

    import clipdex
    index = clipdex.open_index("photos.clipdex")
    index.add("~/Photos", model=clipdex.ModelSpec("ViT-B-32-256", "datacomp_s34b_b86k"))
    for hit in index.search("a dog on the beach", k=5):
        print(hit.score, hit.uri)

Names are imported lazily so that `import clipdex` (and `clipdex --help`) stays instant.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Index": "clipdex.api",
    "IndexStatus": "clipdex.api",
    "open_index": "clipdex.api",
    "ModelSpec": "clipdex.models.spec",
    "ModelIdentity": "clipdex.types",
    "Embedder": "clipdex.models.open_clip",
    "IndexReport": "clipdex.indexer.run",
    "RayOptions": "clipdex.indexer.ray_run",
    "SearchResult": "clipdex.search.results",
    "Filters": "clipdex.search.filters",
    "Near": "clipdex.search.filters",
}

__all__ = [
    "Embedder",
    "Filters",
    "Index",
    "IndexReport",
    "IndexStatus",
    "ModelIdentity",
    "ModelSpec",
    "Near",
    "RayOptions",
    "SearchResult",
    "__version__",
    "open_index",
]

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.api import Index, IndexStatus, open_index
    from clipdex.indexer.ray_run import RayOptions
    from clipdex.indexer.run import IndexReport
    from clipdex.models.open_clip import Embedder
    from clipdex.models.spec import ModelSpec
    from clipdex.search.filters import Filters, Near
    from clipdex.search.results import SearchResult
    from clipdex.types import ModelIdentity


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipdex' has no attribute {name!r}")
