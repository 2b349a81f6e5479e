"""Typed exceptions. The library raises these; the CLI turns them into one-line messages.

Messages say what went wrong and what to do in words, never in a front end's terms (no CLI
flags). Where one argument would help, `hint` names it for a front end to spell its way.
"""

from __future__ import annotations


class ClipdexError(Exception):
    """Base class for every error a user can cause or fix.

    `hint`, when set, is a short code for what to change, named after the Python API's
    argument where there is one: "allow_empty", "wait", "rebuild" (or "other_model": leave
    the model out, rebuild, or use another index folder), "checkpoint". The CLI adds its
    flag to the message (cli/options.py).
    """

    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None):
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


class IndexNotFoundError(ClipdexError):
    """There is no index at the given folder."""


class IndexLockedError(ClipdexError):
    """Another process is writing to the index."""


class IndexReadOnlyError(ClipdexError):
    """The index folder cannot be written."""


class CatalogError(ClipdexError):
    """The catalog is unreadable, from a newer clipdex, or inconsistent."""


class ModelMismatchError(ClipdexError):
    """The index was built with another model than the one asked for."""


class ModelLoadError(ClipdexError):
    """A model's architecture, weights or checkpoint cannot be loaded."""


class SourceError(ClipdexError):
    """A source path or uri does not exist or cannot be listed."""


class QueryError(ClipdexError):
    """A search or classification request is malformed."""


class LabelsError(QueryError):
    """A label list, labels file or template set is malformed."""


class ImageDecodeError(ClipdexError):
    """One image cannot be read; recorded as a failure, never fatal to a run."""


class ExchangeError(ClipdexError):
    """An export folder cannot be written, or embeddings to import are malformed."""


class BackendError(ClipdexError):
    """A distributed embedding backend (Ray) is not installed, unreachable, or failed."""
