"""Defaults a user can override, shared by the library and the CLI (which shows them in
`--help`), so each is written once. No imports: `clipdex --help` stays instant.

The device and precision defaults live in models/device.py, the default model and its
tag in models/builtin.py, training's in training/options.py (all import-light too).
"""

from __future__ import annotations

#: The environment variable naming the index folder, and the folder used without it.
INDEX_ENV = "CLIPDEX_INDEX"
DEFAULT_INDEX_DIR = ".clipdex"

#: Images embedded per batch (and written per catalog transaction) by an index run.
DEFAULT_BATCH_SIZE = 64
#: Data-loading processes of fine-tuning (0: load in the calling process).
DEFAULT_WORKERS = 2
#: Decoding processes for local files when indexing; None: chosen from the cores with
#: the model's torch threads (indexer/balance.py); 0: decode in the calling process.
DEFAULT_DECODE_WORKERS: int | None = None
#: Concurrent downloads for remote sources.
DEFAULT_FETCH_WORKERS = 16

#: The vector store kind a new index records ("auto": clipdex chooses, vectors/auto.py),
#: and every kind a user may ask for (vectors.KINDS plus "auto").
DEFAULT_INDEX_TYPE = "auto"
INDEX_TYPES = (DEFAULT_INDEX_TYPE, "flat", "ivf", "ivf-sq8", "ivf-pq")
#: The memory budget of the automatic kind, unless given: this share of memory.
DEFAULT_MEMORY_BUDGET_FRACTION = 0.25
