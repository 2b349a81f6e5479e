"""The server's settings and limits (import-light: `clipdex serve --help` reads them)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class ServerOptions:
    """How one server answers. Limits bound what any one request may cost."""

    #: Bearer token every /api request must carry (header or ?token=); None: no auth.
    token: str | None = None
    device: str = "auto"
    precision: str = "auto"
    #: Answer concurrent text queries together: one text forward pass, one vector search.
    batching: bool = True
    batch_window_ms: float = 2.0
    max_batch: int = 64
    #: Encode text queries with the text tower's shorter pass (models/text_tower.py);
    #: False: the whole model's text path (open_clip, all 77 positions).
    text_tower: bool = True
    #: Text-query vectors kept in memory (least recently used go first); 0: none.
    query_cache_entries: int = 4096
    max_upload_bytes: int = 20 * 1024 * 1024
    #: Pixels an uploaded image may have (checked from its header, before decoding).
    max_upload_pixels: int = 50_000_000
    max_query_chars: int = 1000
    max_k: int = 1000
    max_offset: int = 10_000
    #: Seconds a request may take, body upload included (then 503).
    request_timeout_s: float = 120.0
    #: Thumbnails made on demand (no stored one) kept in memory, in bytes.
    thumbnail_cache_bytes: int = 64 * 1024 * 1024
    #: Origin allowed to call the API from another site (CORS); None: same origin only.
    cors_origin: str | None = None


def is_loopback(host: str) -> bool:
    """Whether binding `host` only accepts connections from this machine."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")
