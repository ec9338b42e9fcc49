"""The file store's small blobs: rows of one SQLite database beside the files (``inline.db``).

A file per blob costs the file system an inode, a journal commit for its flush and one for its
directory; a row costs an append to SQLite's write-ahead log, and a batch of rows one ``fsync``
of that log (``synchronous=FULL``). ``FileRaw`` keeps blobs up to its ``inline_max`` here and
larger ones as files; see ``nexus.raw.file`` for which wins when a key has both.

Every method blocks (worker threads call them); one writer at a time (``FileRaw``'s batches),
any number of readers, each thread on its own connection. Other processes may share the
database: SQLite locks it, and a writer waits up to ``_BUSY_MS`` for another's transaction.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading

from nexus.fs import create_private_file

_BUSY_MS = 10_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created REAL NOT NULL
)
"""
"""A rowid table with an index on the key, not a table keyed by it (WITHOUT ROWID): a blob of a
few KiB fits in a rowid table's page, where a WITHOUT ROWID row that long spills into an
overflow page of its own; new rows go at the end of the table, and only the small index entries
land at random places."""
_PAGE_SIZE = 8192

_ROWS_PER_STATEMENT = 500
"""Rows per INSERT (5 parameters each: SQLite allows 32,766 per statement since 3.32)."""

Row = tuple[str, bytes, str, str, float]
"""(key, data, sha256, content type, created): one blob as it is stored."""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _insert(verb: str, rows: int) -> str:
    return f"INSERT OR {verb} INTO blobs VALUES " + ",".join(["(?, ?, ?, ?, ?)"] * rows)


class InlineBlobs:
    """The ``blobs`` table of ``path`` (the database is created on the first write).

    Args:
        path: The database file.
        durable: ``synchronous=FULL`` (a committed batch survives a power cut); False: OFF.
    """

    def __init__(self, path: str, *, durable: bool = True) -> None:
        self.path = path
        self._durable = durable
        self._writer: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: builtins.list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        """One user of the writing connection at a time (a batch, or a delete from another thread):
        a statement run inside another thread's transaction would share its fate."""
        self._exists = os.path.exists(path)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        return con

    def _write_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            create_private_file(self.path)  # 0600, and SQLite's -wal and -shm files take its mode
            con = self._connect()
            con.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # a new database only; then fixed by WAL
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'OFF'}")
            con.execute(_SCHEMA)
            if self._durable and not self._exists:
                # The new database's name in the store's directory, durable before any row is
                # answered (SQLite flushes the directory for its log file, not for the database).
                _fsync_dir(os.path.dirname(self.path) or ".")
            self._writer = con
            self._exists = True
        return self._writer

    def _read_connection(self) -> sqlite3.Connection | None:
        """This thread's reader; None while the database does not exist (nothing stored yet)."""
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is not None:
            return con
        if not self._exists:
            if not os.path.exists(self.path):
                return None
            self._exists = True
        con = self._connect()
        try:
            con.execute("SELECT 1 FROM blobs LIMIT 0")
        except sqlite3.OperationalError:
            con.close()  # created by a writer that has not made the table yet
            return None
        self._local.con = con
        with self._lock:
            self._readers.append(con)
        return con

    def put(self, rows: builtins.list[Row], *, replace: bool = True) -> int:
        """Store the rows at once; durable on return. How many were written.

        One statement in one transaction: the interpreter lock is released and taken back
        twice per batch rather than once per row (a worker thread waits for it each time).

        Args:
            rows: The blobs, each key once.
            replace: Replace the rows already under these keys; False leaves them as they are
                (and does not count them).

        Raises:
            sqlite3.Error: nothing was stored.
        """
        with self._writing:
            con = self._write_connection()
            verb = "REPLACE" if replace else "IGNORE"
            if len(rows) <= _ROWS_PER_STATEMENT:
                return int(con.execute(_insert(verb, len(rows)), [value for row in rows for value in row]).rowcount)
            written = 0
            con.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                    chunk = rows[start : start + _ROWS_PER_STATEMENT]
                    statement = _insert(verb, len(chunk))
                    written += con.execute(statement, [value for row in chunk for value in row]).rowcount
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            return written

    def rows(self, keys: builtins.list[str]) -> dict[str, tuple[int, str, str, float]]:
        """(size, sha256, content type, created) of each of ``keys`` that has a row."""
        con = self._read_connection()
        found: dict[str, tuple[int, str, str, float]] = {}
        if con is None:
            return found
        for start in range(0, len(keys), _ROWS_PER_STATEMENT):
            chunk = keys[start : start + _ROWS_PER_STATEMENT]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, length(data), sha256, content_type, created FROM blobs WHERE key IN ({marks})"
            for key, size, sha256, content_type, created in con.execute(query, chunk):
                found[key] = (int(size), str(sha256), str(content_type), float(created))
        return found

    def delete(self, keys: builtins.list[str]) -> int:
        """Remove the rows of ``keys`` (durable on return); how many there were."""
        if not self._exists:
            return 0
        with self._writing:
            con = self._write_connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                removed = sum(con.execute("DELETE FROM blobs WHERE key = ?", (key,)).rowcount for key in keys)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            return removed

    def get(self, key: str) -> bytes | None:
        con = self._read_connection()
        found = None if con is None else con.execute("SELECT data FROM blobs WHERE key = ?", (key,)).fetchone()
        return None if found is None else bytes(found[0])

    def stat(self, key: str) -> tuple[int, str, str, float] | None:
        """(size, sha256, content type, created) of the row under ``key``."""
        con = self._read_connection()
        if con is None:
            return None
        found = con.execute(
            "SELECT length(data), sha256, content_type, created FROM blobs WHERE key = ?", (key,)
        ).fetchone()
        return None if found is None else (int(found[0]), str(found[1]), str(found[2]), float(found[3]))

    def has(self, key: str) -> bool:
        con = self._read_connection()
        return con is not None and con.execute("SELECT 1 FROM blobs WHERE key = ?", (key,)).fetchone() is not None

    def keys(self, prefix: str) -> builtins.list[str]:
        """Every key starting with ``prefix``, ascending."""
        con = self._read_connection()
        if con is None:
            return []
        # A range scan of the primary key from the prefix on (LIKE would read '%' and '_' as
        # wildcards); SQLite orders text by its UTF-8 bytes, which is code point order, as Python's.
        out: builtins.list[str] = []
        for (key,) in con.execute("SELECT key FROM blobs WHERE key >= ? ORDER BY key", (prefix,)):
            if not key.startswith(prefix):
                break
            out.append(key)
        return out

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for con in readers:
            con.close()
        with self._writing:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self._local = threading.local()
