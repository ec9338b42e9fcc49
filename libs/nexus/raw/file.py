"""``file://PATH``: the embedded default. Small blobs are rows of ``PATH/inline.db``, larger ones files.

Directories are created 0700 and files 0600 whatever the process umask (``nexus.fs``).

**Where a blob lives.** A blob of at most ``inline_max`` bytes (64 KiB; ``?inline_max=N``
changes it, 0 keeps every blob in a file) is a row of a SQLite database in the store
(``nexus.raw._inline``, write-ahead log, ``synchronous=FULL``). A larger one is a plain file,
``PATH/data/<key>``, with its metadata in ``PATH/meta/<key>.json``. Creating a file costs the
file system an inode and a journal commit for the file and another for its directory; a row
costs an append to the database's log, and a whole batch of rows one ``fsync`` of it. Stores
written before small blobs became rows are read as they are: every key is looked up as a file
first, then as a row. Storing a key again puts it where its new size belongs and removes it
from the other place.

**Group commit.** Concurrent ``store`` and ``store_if_absent`` calls are written together: a
batch takes every store waiting when the previous batch ends (a key at most once). Its rows are
one INSERT, committed (flushed) before any of them is answered; ``store_if_absent`` rows are an
``INSERT OR IGNORE``, so looking the key up costs no round trip of its own. Its files are
written by several threads at once, each to a temporary file in its final directory, flushed,
then renamed over the key; the metadata file likewise, after the content. Each directory the
batch renamed into is flushed once, and only then are the stores answered. A batch's failure
for one blob (a key clash, a full disk) fails that blob's ``store`` alone.

**Durability.** A ``store`` that returned survives a power cut: its row was committed with
``synchronous=FULL`` (SQLite flushed its write-ahead log, and the directory when that log was
created; the database's own name was flushed when it was created), or its file was fsynced
before its rename and its directory after (and a directory created for it was flushed in its
parent). A crash before that leaves the previous blob, never half of one. When a key moves from
a file to a row, the row is committed first and the file removed (and its directory flushed)
before the store returns; when it moves from a row to a file, the file is in place (flushed)
before the row is removed. Since the file wins a lookup, a crash at any point shows the
previous blob or the new one. A metadata file records the size and modification time of the
content it describes: one that a crash left behind its content no longer matches and is
rebuilt from the content on the next ``stat``. With ``?fsync=0`` nothing is flushed (tests,
scratch stores). Several processes may share a store: SQLite locks its database, files are
renamed into place whole.

**Keys stay inside the store.** ``check_key`` refuses ``..`` and absolute keys before anything
runs; the directory a key's file lives in is resolved once (symlinks included), must lie under
``PATH/data``, and is remembered by device and inode, so a directory replaced by a symlink
afterwards resolves to another inode and is checked again. A blob's own name is opened without
following symlinks. A row is only ever named by its key. All of this, and every file and
database operation, runs in worker threads, except ``exists`` of a file in a directory already
checked (two ``stat`` calls).
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import hashlib
import itertools
import os
import sqlite3
import stat as stat_mode
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from nexus.fs import PRIVATE_FILE_MODE, make_private_dir
from nexus.hooks import Clock, SystemClock
from nexus.raw._errors import RawError, RawKeyError, RawNotFoundError, RawQuotaError, RawUnavailableError
from nexus.raw._inline import InlineBlobs, Row
from nexus.raw._port import DEFAULT_CONTENT_TYPE, RawBackend, RawPage, RawStat, check_key, check_list_args

INLINE_MAX = 64 * 1024
"""Blobs up to this many bytes are rows of the store's database, larger ones files."""
_TMP_PREFIX = ".nexus-tmp-"
_BATCH_ITEMS = 500
_BATCH_BYTES = 16 * 1024 * 1024
"""A batch stops growing at either bound (it always takes at least one blob)."""
_WRITE_THREADS = 8
_DIR_CACHE = 4096
_OPEN_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

_meta_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(slots=True)
class _Store:
    """One ``store`` waiting in, or going through, a batch."""

    key: str
    data: bytes
    content_type: str
    future: asyncio.Future[RawStat | None]
    stat: RawStat | None = None
    tmp: str = ""
    fd: int = -1
    meta_tmp: str = ""
    meta_fd: int = -1
    error: BaseException | None = None
    only_new: bool = False
    """``store_if_absent``: nothing is written when the key holds a blob."""
    present: bool = False
    """The key held a blob already (``only_new``): nothing was written."""


class FileRaw(RawBackend):
    """Blobs under a root directory (created on first use): rows and files, see the module.

    Args:
        root: The directory that holds ``inline.db``, ``data/`` and ``meta/``.
        fsync: Make each blob durable before ``store`` returns.
        clock: Where ``created`` comes from.
        inline_max: Blobs up to this many bytes are rows; 0 keeps every blob in a file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        clock: Clock | None = None,
        inline_max: int = INLINE_MAX,
    ) -> None:
        if inline_max < 0:
            raise RawKeyError(f"inline_max must be >= 0, got {inline_max}")
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"
        self.fsync = fsync
        self.inline_max = inline_max
        self._clock = clock or SystemClock()
        self._data = str(self.root / "data")
        self._meta = str(self.root / "meta")
        self._rows = InlineBlobs(str(self.root / "inline.db"), durable=fsync)
        self._dirs: dict[str, tuple[int, int]] = {}
        self._names = itertools.count()
        self._token = os.urandom(6).hex()
        self._pending: builtins.list[_Store] = []
        self._writer: asyncio.Task[None] | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._root_made = False

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> FileRaw:
        parts = urlsplit(url)
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise RawKeyError(f"NEXUS_RAW_URL {url!r}: give a directory, e.g. file:///var/nexus/raw")
        query = parse_qs(parts.query)
        fsync = query.get("fsync", ["1"])[-1].lower() not in ("0", "false")
        inline_max = INLINE_MAX
        if "inline_max" in query:
            try:
                inline_max = int(query["inline_max"][-1])
            except ValueError:
                inline_max = -1
            if inline_max < 0:
                raise RawKeyError(f"NEXUS_RAW_URL {url!r}: inline_max must be a number of bytes >= 0")
        return cls(path, fsync=fsync, clock=clock, inline_max=inline_max)

    # ------------------------------------------------------------------ paths (worker threads)

    def _split(self, base: str, key: str, suffix: str = "") -> tuple[str, str]:
        """(the directory, the file's path) of ``key`` under ``base``."""
        head, sep, _ = key.rpartition("/")
        directory = f"{base}/{head}" if sep else base
        return directory, f"{base}/{key}{suffix}"

    def _directory(self, directory: str, base: str, *, create: bool) -> bool:
        """Whether ``directory`` exists (created when ``create``) inside ``base``.

        Raises:
            RawKeyError: it resolves outside the store (a symlink planted in it).
            NotADirectoryError: a file is in the way (``create`` only).
        """
        try:
            st = os.stat(directory)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return False
            st = None
        if st is not None:
            if self._dirs.get(directory) == (st.st_dev, st.st_ino):
                return True
            if not stat_mode.S_ISDIR(st.st_mode):
                if create:
                    raise NotADirectoryError(errno.ENOTDIR, "Not a directory", directory)
                return False
        if create:
            make_private_dir(directory)
            if st is None and self.fsync:
                # New directories: each one's name in its parent is made durable too (a file
                # renamed into a directory whose own entry is lost after a power cut is lost).
                parent = directory
                while parent != base and parent.startswith(base + "/"):
                    parent = os.path.dirname(parent)
                    _fsync_dir(parent)
                _fsync_dir(os.path.dirname(base))
        resolved = os.path.realpath(directory)
        real_base = os.path.realpath(base)
        if resolved != real_base and not resolved.startswith(real_base + os.sep):
            raise RawKeyError(f"Raw key under {directory!r} resolves outside the store at {self.root}")
        st = os.stat(directory)
        if len(self._dirs) >= _DIR_CACHE:
            self._dirs.clear()
        self._dirs[directory] = (st.st_dev, st.st_ino)
        return True

    def _known(self, directory: str) -> bool:
        """Whether ``directory`` was checked and is still the directory that was (one ``stat``)."""
        try:
            st = os.stat(directory)
        except OSError:
            return False
        return self._dirs.get(directory) == (st.st_dev, st.st_ino)

    def _open(self, key: str) -> int | None:
        """A read descriptor on the key's file; None when the key has no file."""
        directory, path = self._split(self._data, key)
        if not self._directory(directory, self._data, create=False):
            return None
        try:
            fd = os.open(path, _OPEN_READ)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RawKeyError(f"Raw key {key!r} is a symbolic link in the store at {self.root}") from None
            raise
        if not stat_mode.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    # ------------------------------------------------------------------ store: group commit

    async def store(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat:
        stat = await self._enqueue(key, data, content_type, only_new=False)
        assert stat is not None
        return stat

    async def store_if_absent(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat | None:
        # Looked up by the batch that would write it: no round trip to a thread of its own.
        return await self._enqueue(key, data, content_type, only_new=True)

    async def _enqueue(self, key: str, data: bytes, content_type: str, *, only_new: bool) -> RawStat | None:
        check_key(key)
        loop = asyncio.get_running_loop()
        item = _Store(key, bytes(data), content_type, loop.create_future(), only_new=only_new)
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            # Stores left waiting by a loop that has stopped can no longer be answered.
            self._pending = [waiting for waiting in self._pending if waiting.future.get_loop() is loop]
            self._writer = loop.create_task(self._drain())
        self._pending.append(item)
        return await item.future

    async def _drain(self) -> None:
        """Write the waiting stores, a batch at a time, until none is left."""
        loop = asyncio.get_running_loop()
        while self._pending:
            size = 0
            count = 0
            keys: set[str] = set()
            for item in self._pending:
                if count and (count >= _BATCH_ITEMS or size + len(item.data) > _BATCH_BYTES or item.key in keys):
                    break  # a key twice waits for the next batch: the second store is written after the first
                size += len(item.data)
                count += 1
                keys.add(item.key)
            batch, self._pending = self._pending[:count], self._pending[count:]
            try:
                await loop.run_in_executor(None, self._write_batch, batch)
            except asyncio.CancelledError:
                dropped, self._pending = self._pending, []
                for item in [*batch, *dropped]:
                    item.future.cancel()
                raise
            except Exception as exc:  # outside any one blob's steps: each store of the batch answers it
                for item in batch:
                    item.error = item.error or RawUnavailableError(f"storing {item.key!r} failed: {exc}")
            for item in batch:
                if item.future.done():
                    continue  # its caller was cancelled; the blob is stored all the same
                if item.error is not None:
                    item.future.set_exception(item.error)
                else:
                    item.future.set_result(None if item.present else item.stat)

    def _write_batch(self, batch: builtins.list[_Store]) -> None:
        """Store every blob of the batch durably; each failure is kept on its item."""
        # Each directory is looked at once per batch: the thread takes the interpreter lock back
        # after every system call, and may wait for it each time while the event loop is busy.
        directories: dict[str, bool] = {}
        news = [item for item in batch if item.only_new]
        if news:
            self._mark_present(news, directories)
        for item in news:
            # A file would win over a row already under its key: a large one is looked up too.
            if len(item.data) > self.inline_max and not item.present and item.error is None:
                try:
                    item.present = self._rows.has(item.key)
                except sqlite3.Error as exc:
                    item.error = self._error(item.key, exc)
        batch = [item for item in batch if not item.present and item.error is None]
        for item in batch:
            item.stat = RawStat(
                key=item.key,
                size=len(item.data),
                sha256=hashlib.sha256(item.data).hexdigest(),
                content_type=item.content_type,
                created=self._clock.now(),
            )
        rows = [item for item in batch if len(item.data) <= self.inline_max]
        files = [item for item in batch if len(item.data) > self.inline_max]
        if rows:
            self._write_rows(rows, directories)
        if files:
            self._write_files(files)

    def _has_directory(self, directory: str, directories: dict[str, bool]) -> bool:
        found = directories.get(directory)
        if found is None:
            found = directories[directory] = self._directory(directory, self._data, create=False)
        return found

    def _has_file(self, key: str, directories: dict[str, bool]) -> bool:
        directory, path = self._split(self._data, key)
        if not self._has_directory(directory, directories):
            return False
        try:
            return stat_mode.S_ISREG(os.lstat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def _mark_present(self, items: builtins.list[_Store], directories: dict[str, bool]) -> None:
        """Mark the ``store_if_absent`` items whose key has a file (rows: see ``_write_rows``)."""
        for item in items:
            try:
                item.present = self._has_file(item.key, directories)
            except (RawError, OSError) as exc:
                item.error = self._error(item.key, exc)

    def _write_rows(self, items: builtins.list[_Store], directories: dict[str, bool]) -> None:
        """One statement for every row; then the files these keys had before are removed."""
        # A file under one of these keys (a larger blob stored before, or an older store) would
        # win the lookup over the row: it goes, durably, before the store is answered. Looked
        # up first, so that a key whose directory leaves the store is refused before any row is
        # written. A key just found absent (``store_if_absent``) has none.
        had_file: builtins.list[_Store] = []
        for item in items:
            if not item.only_new:
                try:
                    if self._has_file(item.key, directories):
                        had_file.append(item)
                except (RawError, OSError) as exc:
                    item.error = self._error(item.key, exc)
        items = [item for item in items if item.error is None]
        if not items:
            return
        try:
            if not self._root_made:
                make_private_dir(self.root)
                self._root_made = True
            replacing = [item for item in items if not item.only_new]
            if replacing:
                self._rows.put([_row(item) for item in replacing])
            new = [item for item in items if item.only_new]
            # A row already under a key is left as it is: one statement, which usually writes
            # every row; when it did not, the rows say which were there.
            if new and self._rows.put([_row(item) for item in new], replace=False) < len(new):
                self._mark_rows_present(new)
        except (sqlite3.Error, OSError) as exc:
            for item in items:
                item.error = self._error(item.key, exc)
            return
        removed_from: dict[str, builtins.list[_Store]] = {}
        for item in had_file:
            self._guard(item, self._remove_file, item, removed_from)
        self._flush_directories(removed_from)

    def _mark_rows_present(self, items: builtins.list[_Store]) -> None:
        rows = self._rows.rows([item.key for item in items])
        for item in items:
            assert item.stat is not None
            stat = item.stat
            # A row that is not this blob was there before. One equal to it in every respect
            # (content, type, creation time) cannot be told from it: the store is answered.
            item.present = rows.get(item.key) != (stat.size, stat.sha256, stat.content_type, stat.created)

    def _remove_file(self, item: _Store, removed_from: dict[str, builtins.list[_Store]]) -> None:
        directory, path = self._split(self._data, item.key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        removed_from.setdefault(directory, []).append(item)
        _unlink_quietly(self._split(self._meta, item.key, ".json")[1])

    def _write_files(self, items: builtins.list[_Store]) -> None:
        """Each blob to a temporary file, flushed, renamed over its key; then the directories."""
        try:
            if len(items) == 1:
                self._guard(items[0], self._write_temporary, items[0])
            else:
                # Several threads at once: creating a file and flushing it both wait on the file
                # system, which serves concurrent callers together (one journal commit for many).
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(_WRITE_THREADS, thread_name_prefix="nexus-raw-write")
                writes = [self._threads.submit(self._guard, item, self._write_temporary, item) for item in items]
                for write in writes:
                    write.result()
            renamed_into: dict[str, builtins.list[_Store]] = {}
            for item in items:
                if item.error is None:
                    self._guard(item, self._rename, item, renamed_into)
            self._flush_directories(renamed_into)
        finally:
            _discard(items)
        # The files are in place and win the lookup; rows these keys had are now only clutter.
        stored = [item.key for item in items if item.error is None]
        try:
            self._rows.delete([key for key in stored if self._rows.has(key)])
        except sqlite3.Error:
            pass  # shadowed by the file; removed by the next store or delete of the key

    def _write_temporary(self, item: _Store) -> None:
        """The content, then its metadata, in temporary files beside their final names, flushed."""
        assert item.stat is not None
        directory, _ = self._split(self._data, item.key)
        self._directory(directory, self._data, create=True)
        item.tmp = f"{directory}/{_TMP_PREFIX}{self._token}-{next(self._names)}"
        item.fd = os.open(item.tmp, _OPEN_NEW, PRIVATE_FILE_MODE)
        _write_all(item.fd, item.data)
        meta = _meta_bytes(item.stat, os.fstat(item.fd))
        meta_dir, _ = self._split(self._meta, item.key, ".json")
        self._directory(meta_dir, self._meta, create=True)
        item.meta_tmp = f"{meta_dir}/{_TMP_PREFIX}{self._token}-{next(self._names)}"
        item.meta_fd = os.open(item.meta_tmp, _OPEN_NEW, PRIVATE_FILE_MODE)
        _write_all(item.meta_fd, meta)
        if self.fsync:
            os.fsync(item.fd)
            os.fsync(item.meta_fd)

    def _rename(self, item: _Store, renamed_into: dict[str, builtins.list[_Store]]) -> None:
        directory, path = self._split(self._data, item.key)
        os.replace(item.tmp, path)
        item.tmp = ""
        renamed_into.setdefault(directory, []).append(item)
        meta_dir, meta_path = self._split(self._meta, item.key, ".json")
        os.replace(item.meta_tmp, meta_path)
        item.meta_tmp = ""
        renamed_into.setdefault(meta_dir, []).append(item)

    def _flush_directories(self, changed: dict[str, builtins.list[_Store]]) -> None:
        """fsync each directory once; a failure fails the stores that changed it."""
        if not self.fsync:
            return
        for directory, items in changed.items():
            try:
                _fsync_dir(directory)
            except OSError as exc:
                for item in items:
                    if item.error is None:
                        item.error = self._error(item.key, exc)

    def _guard(self, item: _Store, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except (RawError, OSError) as exc:
            item.error = self._error(item.key, exc)

    def _error(self, key: str, exc: BaseException) -> BaseException:
        """The Raw error a failed store of ``key`` answers."""
        if isinstance(exc, RawError):
            return exc
        if isinstance(exc, NotADirectoryError | IsADirectoryError | FileExistsError):
            return RawKeyError(
                f"Raw key {key!r} clashes with another key in the file store (a file cannot be both a blob "
                f"and a prefix of other files' keys): {exc.strerror}"
            )
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        if full or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return RawQuotaError(f"no space left storing {key!r} under {self.root}")
        return RawUnavailableError(f"storing {key!r} under {self.root} failed: {exc}")

    # ------------------------------------------------------------------ reading

    async def retrieve(self, key: str) -> bytes:
        check_key(key)
        return await asyncio.to_thread(self._retrieve, key)

    def _retrieve(self, key: str) -> bytes:
        try:
            fd = self._open(key)
            if fd is not None:
                with open(fd, "rb") as fh:
                    return fh.read()
            data = self._rows.get(key)
        except (OSError, sqlite3.Error) as exc:
            raise RawUnavailableError(f"reading {key!r} under {self.root} failed: {exc}") from None
        if data is None:
            raise RawNotFoundError(key)
        return data

    async def exists(self, key: str) -> bool:
        check_key(key)
        directory, path = self._split(self._data, key)
        if self._known(directory):
            # Two stats in a directory already checked: cheaper here than a thread's round trip.
            try:
                if stat_mode.S_ISREG(os.lstat(path).st_mode):
                    return True
            except OSError:
                pass  # no file: the row is looked up below
        return await asyncio.to_thread(self._exists, key)

    def _exists(self, key: str) -> bool:
        directory, path = self._split(self._data, key)
        try:
            if self._directory(directory, self._data, create=False):
                try:
                    if stat_mode.S_ISREG(os.lstat(path).st_mode):
                        return True
                except (FileNotFoundError, NotADirectoryError):
                    pass
            return self._rows.has(key)
        except (OSError, sqlite3.Error) as exc:
            raise RawUnavailableError(f"looking up {key!r} under {self.root} failed: {exc}") from None

    async def stat(self, key: str) -> RawStat:
        check_key(key)
        return await asyncio.to_thread(self._stat, key)

    def _stat(self, key: str) -> RawStat:
        try:
            fd = self._open(key)
            if fd is not None:
                with open(fd, "rb") as fh:
                    return self._file_stat(key, fh)
            found = self._rows.stat(key)
        except (OSError, sqlite3.Error) as exc:
            raise RawUnavailableError(f"reading {key!r} under {self.root} failed: {exc}") from None
        if found is None:
            raise RawNotFoundError(key)
        size, sha256, content_type, created = found
        return RawStat(key=key, size=size, sha256=sha256, content_type=content_type, created=created)

    def _file_stat(self, key: str, fh: Any) -> RawStat:
        st = os.fstat(fh.fileno())
        meta: dict[str, Any] = {}
        try:
            with open(self._split(self._meta, key, ".json")[1], "rb") as meta_file:
                meta = _decode_meta(meta_file.read())
        except OSError:
            pass
        if meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns and "sha256" in meta:
            return RawStat(
                key=key,
                size=st.st_size,
                sha256=str(meta["sha256"]),
                content_type=str(meta.get("content_type", DEFAULT_CONTENT_TYPE)),
                created=_number(meta.get("created"), st.st_mtime),
            )
        # The metadata is missing or predates the content (a crash between the two renames, or
        # a file put there by hand): rebuild it from the content.
        content = fh.read()
        stat = RawStat(
            key=key,
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content_type=str(meta.get("content_type", DEFAULT_CONTENT_TYPE)),
            created=st.st_mtime,
        )
        self._repair_meta(key, stat, os.fstat(fh.fileno()))
        return stat

    def _repair_meta(self, key: str, stat: RawStat, st: os.stat_result) -> None:
        """Record rebuilt metadata (not flushed: it is derived, and rebuilt again if lost)."""
        tmp = ""
        try:
            meta_dir, meta_path = self._split(self._meta, key, ".json")
            self._directory(meta_dir, self._meta, create=True)
            tmp = f"{meta_dir}/{_TMP_PREFIX}{self._token}-{next(self._names)}"
            with open(os.open(tmp, _OPEN_NEW, PRIVATE_FILE_MODE), "wb") as out:
                out.write(_meta_bytes(stat, st))
            os.replace(tmp, meta_path)
            tmp = ""
        except (OSError, RawError):
            pass  # a read-only store still answers; the repair is retried next time
        finally:
            if tmp:
                _unlink_quietly(tmp)

    # ------------------------------------------------------------------ listing and deleting

    async def list(self, prefix: str = "", cursor: str | None = None, limit: int = 1000) -> RawPage:
        check_list_args(prefix, cursor, limit)
        keys = await asyncio.to_thread(self._keys, prefix)
        if cursor is not None:
            keys = [k for k in keys if k > cursor]
        page = keys[:limit]
        return RawPage(page, page[-1] if len(keys) > limit else None)

    def _keys(self, prefix: str) -> builtins.list[str]:
        try:
            rows = self._rows.keys(prefix)
        except sqlite3.Error as exc:
            raise RawUnavailableError(f"listing {prefix!r} under {self.root} failed: {exc}") from None
        return sorted(set(self._file_keys(prefix)).union(rows))

    def _file_keys(self, prefix: str) -> builtins.list[str]:
        # Walk only the directory the prefix points into, not the whole store. check_list_args
        # has refused '..' and absolute prefixes; a directory symlinked out of the store is
        # refused here as well, so a listing never shows a file outside it.
        data = Path(self._data)
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = data / head if head else data
        out: builtins.list[str] = []
        if not start.is_dir():
            return out
        real = data.resolve()
        resolved = start.resolve()
        if resolved != real and real not in resolved.parents:
            raise RawKeyError(f"Raw prefix {prefix!r} resolves outside the store at {self.root}")
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            rel = Path(dirpath).relative_to(data).as_posix()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    out.append(key)
        return out

    async def delete(self, key: str) -> None:
        check_key(key)
        await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> None:
        directory, path = self._split(self._data, key)
        found = False
        try:
            if self._directory(directory, self._data, create=False) and stat_mode.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
                found = True
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            raise RawUnavailableError(f"deleting {key!r} under {self.root} failed: {exc}") from None
        if found:
            meta_dir, meta_path = self._split(self._meta, key, ".json")
            _unlink_quietly(meta_path)
            for base, emptied in ((self._data, directory), (self._meta, meta_dir)):
                _prune_empty(Path(base), Path(emptied))
        try:
            found = self._rows.delete([key]) > 0 or found
        except sqlite3.Error as exc:
            raise RawUnavailableError(f"deleting {key!r} under {self.root} failed: {exc}") from None
        if not found:
            raise RawNotFoundError(key)

    async def close(self) -> None:
        """Wait for the stores under way, then release the threads and the database."""
        writer = self._writer
        if writer is not None and not writer.done() and writer.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(writer)
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None
        self._rows.close()


def _row(item: _Store) -> Row:
    assert item.stat is not None
    return (item.key, item.data, item.stat.sha256, item.content_type, item.stat.created)


def _discard(items: builtins.list[_Store]) -> None:
    """Close the items' descriptors and remove the temporary files they did not rename."""
    for item in items:
        for fd in (item.fd, item.meta_fd):
            if fd >= 0:
                os.close(fd)
        item.fd = item.meta_fd = -1
        for tmp in (item.tmp, item.meta_tmp):
            if tmp:
                _unlink_quietly(tmp)
        item.tmp = item.meta_tmp = ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _meta_bytes(stat: RawStat, st: os.stat_result) -> bytes:
    """A metadata file's content: the blob's stat, and the size and modification time of the
    content it describes (how a stale one is recognised)."""
    return _meta_encoder.encode(
        {
            "key": stat.key,
            "size": stat.size,
            "sha256": stat.sha256,
            "content_type": stat.content_type,
            "created": stat.created,
            "mtime_ns": st.st_mtime_ns,
        }
    )


def _decode_meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _prune_empty(base: Path, directory: Path) -> None:
    while directory != base and base in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _number(value: object, default: float) -> float:
    """A number recorded in a blob's metadata, or ``default`` when it is missing or not one."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
