"""What Nexus's PostgreSQL adapters (the event log's and Raw's) share: reading the URL, keeping
the password out of sight, and opening connections whose waits are bounded.

One module so that both read a ``postgresql://`` URL the same way (the same ``pool_size``, the
same libpq defaults) and mask a password by the same rule; each adapter turns the errors raised
here into its own library's (``EventLogArgumentError``, ``RawKeyError``, …) at its boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg_pool import AsyncConnectionPool
except ImportError:  # pragma: no cover - psycopg is a declared dependency
    psycopg = None  # type: ignore[assignment]

DEFAULT_POOL_SIZE: Final = 4
CONNECT_TIMEOUT_S: Final = 10
"""libpq's ``connect_timeout`` unless the URL sets one, and the wait for a pool's first connection."""
DRIVER_MISSING: Final = "psycopg is not installed (pip install 'psycopg[binary]' psycopg-pool)"


class PostgresUrlError(ValueError):
    """The URL is not a usable ``postgresql://`` URL; the message shows it with its password masked."""


@dataclass(frozen=True)
class PostgresUrl:
    """What a ``postgresql://`` URL says: the libpq connection string and the pool's size."""

    conninfo: str = field(repr=False)
    """For libpq (the password inside: never shown)."""
    shown: str
    """The URL with the password masked, for messages and an adapter's ``url``."""
    pool_size: int = DEFAULT_POOL_SIZE
    password: str = field(default="", repr=False)
    """Masked in any driver message that would echo it (``no_secret``)."""

    @classmethod
    def parse(cls, url: str, *, application_name: str) -> Self:
        """Parse ``postgresql://…`` / ``postgres://…``: libpq's URL plus ``pool_size`` (1 to 100),
        which is taken out before the URL goes to libpq.

        ``application_name`` names the connections in ``pg_stat_activity`` unless the URL does.

        Raises:
            PostgresUrlError: another scheme, a bad ``pool_size``, or a URL libpq refuses.
        """
        shown = mask_password(url)
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise PostgresUrlError(f"{shown!r} is not a postgresql:// URL")
        pool_size = DEFAULT_POOL_SIZE
        kept: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "pool_size":
                if not value.isdigit() or not 1 <= int(value) <= 100:
                    raise PostgresUrlError(f"{shown!r}: pool_size={value!r} is not a number from 1 to 100")
                pool_size = int(value)
            else:
                kept.append((key, value))
        # Built by hand: urlunsplit drops the "//" of a URL without a host (a unix socket's).
        query = urlencode(kept)
        libpq_url = f"postgresql://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
        try:
            given = conninfo_to_dict(libpq_url)
            defaults: dict[str, Any] = {}
            if "connect_timeout" not in given:
                defaults["connect_timeout"] = CONNECT_TIMEOUT_S
            if "application_name" not in given:
                defaults["application_name"] = application_name
            conninfo = make_conninfo(libpq_url, **defaults)
        except psycopg.ProgrammingError as exc:
            raise PostgresUrlError(
                f"{shown!r} is not a usable PostgreSQL URL: {no_secret(exc, _url_password(url))}"
            ) from None
        password = str(given.get("password") or _url_password(url))
        return cls(conninfo=conninfo, shown=shown, pool_size=pool_size, password=password)


def mask_password(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostinfo}"
        query = "&".join(
            f"{key}=***" if key.lower() == "password" else item
            for item in parts.query.split("&")
            if item
            for key in [item.split("=", 1)[0]]
        )
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        return "postgresql://(a URL that does not parse)"


def _url_password(url: str) -> str:
    """The password a URL carries (a ``password=`` parameter first, then the authority's), or ""."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        for key, value in parse_qsl(parts.query):
            if key.lower() == "password":
                return value
        return parts.password or ""
    return ""


def no_secret(exc: BaseException, password: str) -> str:
    """The error's text with the password masked, in case a driver echoed it."""
    text = str(exc)
    return text.replace(password, "***") if password else text


async def open_pool(
    options: PostgresUrl,
    *,
    name: str,
    configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
) -> AsyncConnectionPool[Any]:
    """A pool of ``options.pool_size`` autocommit connections, open once its first connection is.

    ``configure`` sets up each new connection. Waits at most ``CONNECT_TIMEOUT_S``, for the first
    connection and for a connection later; the pool is closed again if opening fails.

    Raises:
        psycopg.Error, psycopg_pool.PoolTimeout: the server cannot be reached or refuses us
            (the caller translates them, masking the password with ``no_secret``).
    """
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        options.conninfo,
        min_size=1,
        max_size=options.pool_size,
        kwargs={"autocommit": True},
        configure=configure,
        open=False,
        name=name,
        timeout=CONNECT_TIMEOUT_S,
    )
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except BaseException:
        await pool.close()
        raise
    return pool


async def bound_waits(con: psycopg.AsyncConnection[Any], *, lock_timeout_s: int, idle_in_transaction_s: int) -> None:
    """Bound the session's wait for a lock, and the time it may sit idle inside a transaction.

    Why both: a statement waiting behind another process's stuck transaction fails (and the
    adapter says so) instead of hanging, and a process stopped mid-transaction has its session
    ended by the server instead of holding its locks for everyone.
    """
    await con.execute(
        "SELECT set_config('lock_timeout', %s, false), set_config('idle_in_transaction_session_timeout', %s, false)",
        [f"{lock_timeout_s}s", f"{idle_in_transaction_s}s"],
    )


__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_POOL_SIZE",
    "DRIVER_MISSING",
    "PostgresUrl",
    "PostgresUrlError",
    "bound_waits",
    "mask_password",
    "no_secret",
    "open_pool",
]
