"""``file://PATH``: the embedded default. Blobs are files under ``PATH/data``, metadata under ``PATH/meta``.

Directories are created 0700 and files 0600 whatever the process umask (``nexus.fs``).
A blob is written to a temporary file in its final directory, fsynced, and renamed over the
old one, so a crash leaves either the old or the new content, never half of one. Its metadata
(``meta/<key>.json``) is written the same way afterwards and records the data file's size and
modification time: when a crash fell between the two renames, the stale metadata no longer
matches the file and is rebuilt from the content on the next read.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import hashlib
import json
import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from nexus.fs import PRIVATE_FILE_MODE, make_private_dir
from nexus.hooks import Clock, SystemClock
from nexus.raw._errors import RawKeyError, RawNotFoundError, RawQuotaError, RawUnavailableError
from nexus.raw._port import DEFAULT_CONTENT_TYPE, RawBackend, RawPage, RawStat, check_key, check_list_args

_TMP_PREFIX = ".nexus-tmp-"


class FileRaw(RawBackend):
    """Blobs as files under a root directory (created on first use).

    Blocking file I/O runs in worker threads (``asyncio.to_thread``).

    Args:
        root: The directory that holds ``data/`` and ``meta/``.
        fsync: Flush each blob and its directory to disk before ``store`` returns.
        clock: Where ``created`` comes from.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, clock: Clock | None = None) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"
        self.fsync = fsync
        self._clock = clock or SystemClock()
        self._data = self.root / "data"
        self._meta = self.root / "meta"

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> FileRaw:
        parts = urlsplit(url)
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise RawKeyError(f"NEXUS_RAW_URL {url!r}: give a directory, e.g. file:///var/nexus/raw")
        fsync = "fsync=0" not in parts.query and "fsync=false" not in parts.query
        return cls(path, fsync=fsync, clock=clock)

    # ------------------------------------------------------------------ paths

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        data = self._data / key
        meta = self._meta / (key + ".json")
        # check_key already refuses '..' and absolute keys; resolving again guards against
        # symlinks planted inside the store that point elsewhere.
        for path, base in ((data, self._data), (meta, self._meta)):
            resolved = path.resolve()
            if resolved != base.resolve() and base.resolve() not in resolved.parents:
                raise RawKeyError(f"Raw key {key!r} resolves outside the store at {self.root}")
        return data, meta

    # ------------------------------------------------------------------ operations

    async def store(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat:
        data_path, meta_path = self._paths(key)
        return await asyncio.to_thread(self._store, key, bytes(data), content_type, data_path, meta_path)

    def _store(self, key: str, data: bytes, content_type: str, data_path: Path, meta_path: Path) -> RawStat:
        try:
            self._write_atomic(data_path, data)
            st = data_path.stat()
            stat = RawStat(
                key=key,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                content_type=content_type,
                created=self._clock.now(),
            )
            self._write_meta(meta_path, stat, st)
            return stat
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise RawKeyError(
                f"Raw key {key!r} clashes with another key in the file store (a key cannot be both a blob "
                f"and a prefix of other keys): {exc.strerror}"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise RawQuotaError(f"no space left storing {key!r} under {self.root}") from None
            raise RawUnavailableError(f"storing {key!r} under {self.root} failed: {exc}") from None

    def _write_atomic(self, path: Path, content: bytes) -> None:
        # Blobs are tenants' data: directories 0700 and files 0600, whatever the umask.
        make_private_dir(path.parent)
        tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
            with open(fd, "wb") as fh:
                fh.write(content)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(path.parent)

    def _write_meta(self, meta_path: Path, stat: RawStat, st: os.stat_result) -> None:
        body = {
            "key": stat.key,
            "size": stat.size,
            "sha256": stat.sha256,
            "content_type": stat.content_type,
            "created": stat.created,
            "mtime_ns": st.st_mtime_ns,
        }
        self._write_atomic(meta_path, json.dumps(body, sort_keys=True).encode())

    async def retrieve(self, key: str) -> bytes:
        data_path, meta_path = self._paths(key)
        return await asyncio.to_thread(self._retrieve, key, data_path, meta_path)

    def _retrieve(self, key: str, data_path: Path, meta_path: Path) -> bytes:
        try:
            return data_path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise RawNotFoundError(key) from None
        except OSError as exc:
            raise RawUnavailableError(f"reading {key!r} under {self.root} failed: {exc}") from None

    async def exists(self, key: str) -> bool:
        data_path, _ = self._paths(key)
        return await asyncio.to_thread(data_path.is_file)

    async def stat(self, key: str) -> RawStat:
        data_path, meta_path = self._paths(key)
        return await asyncio.to_thread(self._stat, key, data_path, meta_path)

    def _stat(self, key: str, data_path: Path, meta_path: Path) -> RawStat:
        try:
            st = data_path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise RawNotFoundError(key) from None
        if not data_path.is_file():
            raise RawNotFoundError(key)
        meta: dict[str, object] = {}
        try:
            meta = json.loads(meta_path.read_bytes())
        except (OSError, ValueError):
            meta = {}
        if meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns:
            return RawStat(
                key=key,
                size=st.st_size,
                sha256=str(meta["sha256"]),
                content_type=str(meta.get("content_type", DEFAULT_CONTENT_TYPE)),
                created=_number(meta.get("created"), st.st_mtime),
            )
        # The metadata is missing or predates the content (a crash between the two renames,
        # or a file put there by hand): rebuild it from the content.
        content = data_path.read_bytes()
        stat = RawStat(
            key=key,
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content_type=str(meta.get("content_type", DEFAULT_CONTENT_TYPE)),
            created=st.st_mtime,
        )
        try:
            self._write_meta(meta_path, stat, st)
        except OSError:
            pass  # a read-only store still answers; the repair is retried next time
        return stat

    async def list(self, prefix: str = "", cursor: str | None = None, limit: int = 1000) -> RawPage:
        check_list_args(prefix, cursor, limit)
        keys = await asyncio.to_thread(self._keys, prefix)
        if cursor is not None:
            keys = [k for k in keys if k > cursor]
        page = keys[:limit]
        return RawPage(page, page[-1] if len(keys) > limit else None)

    def _keys(self, prefix: str) -> builtins.list[str]:
        # Walk only the directory the prefix points into, not the whole store. check_list_args
        # has refused '..' and absolute prefixes; a directory symlinked out of the store is
        # refused here as well, so a listing never shows a file outside it.
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._data / head if head else self._data
        out: builtins.list[str] = []
        if not start.is_dir():
            return out
        data = self._data.resolve()
        resolved = start.resolve()
        if resolved != data and data not in resolved.parents:
            raise RawKeyError(f"Raw prefix {prefix!r} resolves outside the store at {self.root}")
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            rel = Path(dirpath).relative_to(self._data).as_posix()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    out.append(key)
        out.sort()
        return out

    async def delete(self, key: str) -> None:
        data_path, meta_path = self._paths(key)
        await asyncio.to_thread(self._delete, key, data_path, meta_path)

    def _delete(self, key: str, data_path: Path, meta_path: Path) -> None:
        try:
            data_path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise RawNotFoundError(key) from None
        except OSError as exc:
            raise RawUnavailableError(f"deleting {key!r} under {self.root} failed: {exc}") from None
        meta_path.unlink(missing_ok=True)
        for base, path in ((self._data, data_path), (self._meta, meta_path)):
            _prune_empty(base, path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune_empty(base: Path, directory: Path) -> None:
    while directory != base and base in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _number(value: object, default: float) -> float:
    """A number recorded in a blob's metadata file, or ``default`` when it is missing or not one."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
