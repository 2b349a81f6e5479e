"""Indexer: list sources, decide what changed, decode in parallel, embed in batches."""
