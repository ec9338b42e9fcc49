"""Private data on disk: the data directory is 0700 and what Nexus writes in it 0600.

The data directory holds the event log (every tenant's inputs, key hashes), Raw's blobs and
the NATS store. Under the common umask 022 they would be readable by every local user, so
each process entry point calls ``restrict_umask()`` first (children inherit it), and the
modules that create directories there call ``make_private_dir``, which also tightens a
directory an older version created 0755.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077
"""New files 0600, new directories 0700."""
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def restrict_umask() -> int:
    """Set the process umask to 0o077 and return the previous one.

    Every file and directory the process (and every child it starts afterwards) creates is then
    private to its user, whatever the shell's umask was.
    """
    return os.umask(PRIVATE_UMASK)


def make_private_dir(path: str | os.PathLike[str], *, tighten_existing: bool = True) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; tighten it to 0700 if it exists.

    Parents created here are 0700 as well. An existing directory owned by another user is left
    as it is (its owner decides); one owned by this user is chmodded to 0700, unless
    ``tighten_existing`` is False (a directory the user named for a file of ours, such as the
    folder of a backup or of a SQLite file outside the data directory, is the user's to keep).

    Returns:
        The directory's path.

    Raises:
        NotADirectoryError: ``path`` exists and is not a directory.
        OSError: it cannot be created.
    """
    directory = Path(path)
    missing: list[Path] = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # created meanwhile by another process; tightened below if it is ours
        _tighten(new)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    if tighten_existing or directory in missing:
        _tighten(directory)
    return directory


def create_private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (then it is left as it is).

    For files another library creates (SQLite's database, whose journal files take its mode),
    so they are private even where the process umask is not.
    """
    file = Path(path)
    try:
        os.close(os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass
    return file


def _tighten(directory: Path) -> None:
    st = directory.stat()
    # mkdir's mode is filtered by the umask, so chmod explicitly; never touch another user's.
    if st.st_uid == os.geteuid() and (st.st_mode & 0o777) != PRIVATE_DIR_MODE:
        os.chmod(directory, PRIVATE_DIR_MODE)
