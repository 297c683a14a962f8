"""The outbox folder and the gateway's own folders: listing, reading, atomic writes and moves.

The producer's convention (README): write ``NAME.xml.tmp`` (or into
``outbox/.tmp/``) and rename it to ``NAME.xml`` when complete. Hidden and
temporary files are never touched. A file is taken once no process holds it
open for writing (``open_for_writing``: a Linux lease probe), or else once it
has been quiet for a while.

Durability: a move is a rename followed by an fsync of both directories; a
write goes to a hidden temporary file that is fsynced and renamed into place,
then the directory is fsynced. Across file systems a move is copy + fsync +
rename + unlink, in that order, so a crash leaves at worst two copies, never
none (the store's pick-up record decides which one counts).

The functions a message passes through (`read_bounded`, `move`, `remove_plaintext`) also take plain
strings, and the pipeline gives them strings: ``pathlib`` interns every part of every path it builds
(``sys.intern``), and a new name per message churns CPython's table of interned strings until it
resizes. That resize doubled the table once, at ~29,000 messages, a step of ~4.5 MB the soak showed
(tests/reliability/test_reliability_load.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

#: a path as the pipeline passes it: a string (see the module) or a Path
AnyPath = str | os.PathLike

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".swp", "~")


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    size: int
    mtime_ns: int


def is_ignored(name: str) -> bool:
    """Hidden and temporary files belong to the producer, not to the gateway."""
    lower = name.lower()
    return name.startswith(".") or lower.endswith(TEMP_SUFFIXES)


def candidates(folder: Path) -> list[Candidate]:
    """Regular, non-hidden, non-temporary files directly in `folder` (sub-folders are not read)."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        if is_ignored(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if entry.is_file(follow_symlinks=False):
            found.append(Candidate(entry.name, st.st_size, st.st_mtime_ns))
    return sorted(found, key=lambda c: (c.mtime_ns, c.name))


def open_for_writing(path: Path) -> bool | None:
    """Whether some process holds `path` open for writing: True, False, or None when this cannot be known.

    A read lease (fcntl F_SETLEASE) is granted only while no one has the file open for writing; it is
    released at once. Known only where leases work: we own the file (or have CAP_LEASE), on a local
    file system, and SIGIO is ignored (a writer opening the file in the instant we hold the lease
    makes the kernel send SIGIO, which would otherwise end the process). Elsewhere: None.
    """
    if signal.getsignal(signal.SIGIO) is not signal.SIG_IGN:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # gone or unreadable: the caller's next step reports it
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return True if e.errno == errno.EAGAIN else None  # EACCES: not ours; EINVAL: no leases here
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def read_bounded(path: AnyPath, limit: int) -> bytes | None:
    """The file's bytes, or None when it is larger than `limit` (then nothing more than limit+1 is read)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    return None if len(data) > limit else data


def fsync_dir(folder: AnyPath) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o640) -> None:
    """`path` holds either its old content or all of `data`, never a part, even after a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_OWN_TEMPORARY = re.compile(r"\..+\.\d+\.tmp")


def remove_own_temporaries(folder: Path) -> int:
    """Remove what a killed `write_atomic` or cross-device `move` left in `folder` (`.NAME.PID.tmp`, never
    renamed into place, so never the real file); call it before writing there. The number removed."""
    removed = 0
    for path in folder.iterdir() if folder.is_dir() else ():
        if _OWN_TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        fsync_dir(folder)
    return removed


def free_name(folder: Path, name: str) -> str:
    """`name`, or `name.1`, `name.2`, … when taken (a second drop of the same name is kept, not overwritten)."""
    candidate, n = name, 0
    while (folder / candidate).exists() or (folder / f"{candidate}.error.json").exists():
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def move(src: AnyPath, dst: AnyPath) -> None:
    """Move `src` to `dst` durably (see the module); `dst` must not exist."""
    try:
        os.link(src, dst)  # fails rather than overwrite
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _copy_across(src, dst)
    os.unlink(src)
    src_folder, dst_folder = _folder_of(src), _folder_of(dst)
    fsync_dir(dst_folder)
    if os.path.normpath(src_folder) != os.path.normpath(dst_folder):
        fsync_dir(src_folder)


def _folder_of(path: AnyPath) -> str:
    return os.path.dirname(os.fspath(path)) or "."


def _copy_across(src: AnyPath, dst: AnyPath) -> None:
    folder, name = os.path.split(os.fspath(dst))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
        fout.flush()
        os.fsync(fout.fileno())
    os.link(tmp, dst)
    os.unlink(tmp)


def remove_plaintext(path: AnyPath) -> bool:
    """Remove a spooled plaintext copy durably; False when it was gone already."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(_folder_of(path))
    return True
