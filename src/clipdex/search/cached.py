"""A text query's vector through the catalog's query cache: a repeated query never loads
(or even imports) the model.

The rule for a changed checkpoint: a cached vector was made by the model whose identity
the index records (the key holds its checkpoint's SHA-256), so it is that model's vector
whatever the file holds now. Every load of the model still compares the file's SHA-256
with the index's: a query that is not cached is refused when the file changed since
indexing (tests/test_query_cache.py pins both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from clipdex.errors import QueryError
from clipdex.storage.catalog import Catalog
from clipdex.storage.query_cache import QueryCache
from clipdex.types import ModelIdentity


class TextModel(Protocol):
    """What a text query needs of a model: an Embedder or the text tower alone."""

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray: ...


def text_query_vector(
    catalog: Catalog,
    identity: ModelIdentity,
    text: str,
    load: Callable[[], TextModel],
    precision: str | None = None,
) -> np.ndarray:
    """The unit vector of `text` under the index's model `identity` run in `precision`
    (the one asked for: an int8 vector is cached apart, storage/query_cache.py): cached,
    else encoded by the model `load()` returns (its identity already checked) and cached."""
    text = text.strip()
    if not text:
        raise QueryError("the query text is empty")
    cache = QueryCache(catalog)
    vector = cache.get(identity, text, precision)
    if vector is not None:
        return vector
    vector = load().encode_texts([text])[0].astype(np.float32)
    cache.put(identity, text, vector, precision)
    return vector
