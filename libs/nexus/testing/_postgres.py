"""A real PostgreSQL server for tests and benchmarks, started from the machine's server binaries.

``shared_server()`` starts one server per process (the first call; later calls return it) in a
new temporary directory, on a free loopback port, and stops it when the process exits::

    server = shared_server()                 # raises PostgresUnavailable, with the reason
    url = server.create_database()           # a clean database: postgresql://nexus:…@127.0.0.1:PORT/…
    ...
    server.release_database(url)             # emptied, and handed to the next create_database()

Where the binaries come from: Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``,
the newest version found), else ``initdb`` and ``pg_ctl`` on the PATH. Where neither exists and
we are root with ``apt-get``, Debian's ``postgresql`` package is installed (said on stderr).

``initdb`` refuses to run as root, which CI is: as root, the server runs as the package's
``postgres`` user (``runuser``), and the temporary directory is handed to that user. The
server listens on 127.0.0.1 only; TCP logins need the password (SCRAM), a random one per
server; the unix socket lives in the private temporary directory. ``durable=False`` (tests)
turns fsync off, which changes nothing a test can observe short of a power cut.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit

_USER: Final = "nexus"
_RUN_AS: Final = ("postgres", "nobody")
"""Who runs the server when we are root (initdb refuses root): the package's user, else nobody."""


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says why (tests skip with it)."""


def find_binaries(*, install: bool = True) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises:
        PostgresUnavailable: none found, and Debian's package could not be installed.
    """
    found = _binaries()
    if found is not None:
        return found
    if not install:
        raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl), and Debian's postgresql package cannot be "
            "installed here (needs root and apt-get): apt-get install postgresql"
        )
    print(
        "nexus.testing: no PostgreSQL server binaries found; installing Debian's postgresql package with apt-get",
        file=sys.stderr,
        flush=True,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        # The package lists may be missing or stale on a fresh machine.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    found = _binaries()
    if found is None:
        raise PostgresUnavailable(
            f"installing Debian's postgresql package failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        )
    return found


def _binaries() -> Path | None:
    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)
    for initdb in candidates:
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists() and (bindir / "postgres").exists():
            return bindir
    initdb_path = shutil.which("initdb")
    if initdb_path is not None:
        bindir = Path(initdb_path).resolve().parent
        if (bindir / "pg_ctl").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One running PostgreSQL server in its own temporary directory; ``stop()`` removes both."""

    def __init__(self, *, durable: bool = False, install: bool = True) -> None:
        """Start the server (a few seconds: initdb, then pg_ctl start).

        Raises:
            PostgresUnavailable: no binaries, or the server did not start (the reason, with its log's tail).
        """
        self.bindir = find_binaries(install=install)
        self.password = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._stopped = False
        self._free: list[str] = []
        """Released databases, emptied, ready for the next ``create_database``."""
        self._owner = self._run_as()
        self.root = Path(tempfile.mkdtemp(prefix="nexus-pg-"))
        try:
            self._start(durable)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def __repr__(self) -> str:  # never the password
        return f"PostgresServer(127.0.0.1:{self.port})"

    def _run_as(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in _RUN_AS:
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        raise PostgresUnavailable("initdb refuses to run as root, and there is no postgres (or nobody) user to run it")

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False)

    def _start(self, durable: bool) -> None:
        data, sockets = self.root / "data", self.root / "sockets"
        sockets.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._owner is not None:
            for path in (self.root, sockets, pwfile):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        initdb = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            _USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        if initdb.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {initdb.stderr.strip()[-800:]}")
        settings = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={sockets}",
            "-c max_connections=200",
        ]
        if not durable:
            settings += ["-c fsync=off", "-c full_page_writes=off"]
        for _ in range(3):
            self.port = _free_port()
            started = self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join([*settings, f"-c port={self.port}"]),
                "start",
            )
            if started.returncode == 0:
                break
        else:
            log = (
                (self.root / "server.log").read_text(errors="replace")[-800:]
                if (self.root / "server.log").exists()
                else ""
            )
            raise PostgresUnavailable(f"pg_ctl start failed: {started.stderr.strip()[-400:]} {log}")
        self.data = data
        self.sockets = sockets

    # ---- databases --------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A TCP URL for ``database`` with the password (keep it out of logs)."""
        return f"postgresql://{_USER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        """A unix socket URL for ``database`` (no password: the socket's directory is private)."""
        return f"postgresql:///{database}?host={quote(str(self.sockets), safe='')}&port={self.port}&user={_USER}"

    def create_database(self) -> str:
        """A clean database of its own (new, or a released one emptied); returns its URL.

        ``CREATE DATABASE`` copies a template, about a second on a busy machine; emptying a
        released database takes milliseconds, so a test session mostly reuses one or two.
        """
        with self._lock:
            name = self._free.pop() if self._free else None
        if name is None:
            name = f"test_{secrets.token_hex(6)}"
            self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def release_database(self, url: str) -> None:
        """Empty the database ``url`` names and keep it for the next ``create_database``.

        Every other connection to it is ended first, and every schema in it dropped (tables,
        functions, triggers and all), so the next user finds it as CREATE DATABASE leaves it.
        """
        import psycopg

        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.url(name), autocommit=True) as con:
            con.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            schemas = [
                row[0]
                for row in con.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND nspname NOT LIKE 'pg\\_%'"
                ).fetchall()
            ]
            for schema in schemas:
                con.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())
            con.execute(b"CREATE SCHEMA public AUTHORIZATION pg_database_owner")
            con.execute(b"GRANT USAGE ON SCHEMA public TO PUBLIC")
        with self._lock:
            self._free.append(name)

    def drop_database(self, url: str) -> None:
        """Drop the database ``url`` names, disconnecting whoever is still connected."""
        name = urlsplit(url).path.lstrip("/")
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def execute(self, statement: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE DATABASE cannot run in one)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as con:
            con.execute(statement.encode())

    # ---- lifecycle --------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the server at once and remove its directory (a test server keeps nothing)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


_shared: PostgresServer | None = None
_shared_error: PostgresUnavailable | None = None
_shared_lock = threading.Lock()


def shared_server() -> PostgresServer:
    """The process's test server, started on the first call and stopped when the process exits.

    Raises:
        PostgresUnavailable: it cannot be started here (the same reason on every later call).
    """
    global _shared, _shared_error
    with _shared_lock:
        if _shared is None and _shared_error is None:
            try:
                _shared = PostgresServer()
            except PostgresUnavailable as exc:
                _shared_error = exc
            else:
                atexit.register(_shared.stop)
        if _shared_error is not None:
            raise _shared_error
        assert _shared is not None
        return _shared


__all__ = ["PostgresServer", "PostgresUnavailable", "find_binaries", "shared_server"]
