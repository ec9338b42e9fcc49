"""Atlas's one error hierarchy."""

from __future__ import annotations


class AtlasError(Exception):
    """Base of every error Atlas raises."""


class AtlasViewNotFoundError(AtlasError, KeyError):
    """``update`` or ``delete`` named a view that does not exist."""

    def __init__(self, collection: str, key: str) -> None:
        super().__init__(f"{collection}: no view with id {key!r}")
        self.collection = collection
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


class AtlasViewExistsError(AtlasError):
    """``insert`` named a view that already exists (use ``update`` or ``upsert``)."""

    def __init__(self, collection: str, key: str) -> None:
        super().__init__(f"{collection}: a view with id {key!r} already exists")
        self.collection = collection
        self.key = key


class AtlasFilterError(AtlasError, ValueError):
    """A filter, sort or pagination argument is malformed; the message says where."""


class AtlasSnapshotError(AtlasError, ValueError):
    """A snapshot cannot be restored (bad bytes, or a digest that does not match its content)."""
