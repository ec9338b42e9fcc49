"""Raw's one error hierarchy: callers never see a driver's or the file system's exceptions."""

from __future__ import annotations


class RawError(Exception):
    """Base of every error Raw raises."""


class RawNotFoundError(RawError, KeyError):
    """No blob is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob is stored under {key!r}")
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


class RawQuotaError(RawError):
    """Storing the blob would exceed the backend's size limit; nothing was stored."""


class RawKeyError(RawError, ValueError):
    """The key is not acceptable (empty, absolute, escaping the root with ``..``, …)."""


class RawUnavailableError(RawError):
    """The backend failed or cannot be reached; the operation may be retried."""
