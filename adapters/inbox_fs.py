"""The inbox folder (verified messages for the receiving systems) and the quarantine folder.

The convention for the receiving systems (a municipality's or a PI's own software; also in README)::

    inbox/<type>/<message id>.xml    the message, exactly as the sender signed it
    inbox/<type>/<message id>.json   what the gateway verified: sender party, signer certificate
                                     (SHA-256 fingerprint), MIC, transport and its message id,
                                     time of arrival, dossier reference

- The ``.json`` is written before the ``.xml``: once the ``.xml`` is there, its ``.json`` is too.
  Take a message when its ``.xml`` appears; take the ``.xml`` and the ``.json`` away together
  (move the ``.xml`` first, then the ``.json``), into your own folder, or delete both once
  processed. A ``.json`` without its ``.xml`` is not a message (yet).
- Files whose names start with ``.`` are being written: never touch them.
- Each file is written whole or not at all: a hidden temporary file in the same folder,
  fsynced, renamed into place, then the folder fsynced. The gateway never rewrites a ``.xml``.
  When the ``.xml`` cannot be written (a full disk), its ``.json`` is removed again: a failed
  write leaves nothing.
- A message id appears once: a duplicate arrival is answered with the same receipt and never
  written again. (After a crash between writing a message and recording it, the gateway finds
  its own file again by the id; if a system took it away in that instant, the repeat can appear
  once more: key your processing on the message id.)

Quarantine: what could not be opened, verified or accepted is kept as
``quarantine/<UTC time>-<sha256 prefix>.p7m`` (the bytes as received) with a ``.json``
beside it saying why; nothing there is ever deleted by the gateway.

Bytes and files only: the type is an opaque label naming a sub-folder, and the metadata is
whatever the caller gives (it must not hold personal data: it is read by operators and tools).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adapters.outbox_fs import AnyPath, fsync_dir

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\Z")
#: a message id fit for a file name: no separators, no leading dot, bounded
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_TEMP = re.compile(r"\..+\.[0-9a-f]{16}\.tmp\Z")


def check_label(label: str) -> str:
    if not isinstance(label, str) or not _LABEL.match(label):
        raise ValueError("an inbox label must be a plain token [a-z0-9-]")
    return label


def check_id(message_id: str) -> str:
    if not isinstance(message_id, str) or not _ID.match(message_id) or ".." in message_id:
        raise ValueError("a message id in the inbox must be 1-128 of [A-Za-z0-9._-], not starting with a dot")
    return message_id


def _write_new(path: AnyPath, data: bytes, mode: int, *, replace: bool) -> None:
    """`path` gets all of `data` or nothing. With replace=False an existing `path` is never
    overwritten (FileExistsError). The temporary name is hidden and unique per write."""
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails rather than overwrite
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder or ".")


def _folder(path: AnyPath, mode: int = 0o750) -> AnyPath:
    if not os.path.isdir(path):
        os.makedirs(path, mode=mode, exist_ok=True)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    return path


def _json(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(data), indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


@dataclass(frozen=True)
class InboxEntry:
    """A message in the inbox (its ``.xml`` is in place). Its paths are kept as strings and made ``Path``s
    only when asked for: pathlib interns every name (see adapters/outbox_fs.py), and the daemon files
    every arrival without asking."""

    label: str
    message_id: str
    xml_file: str
    meta_file: str
    metadata: dict[str, Any] = field(repr=False)  #: the .json as read ({} when missing or unreadable)

    @property
    def xml_path(self) -> Path:
        return Path(self.xml_file)

    @property
    def meta_path(self) -> Path:
        return Path(self.meta_file)


class InboxWriter:
    """Writes verified messages into ``root/<label>/`` (see the module for the convention)."""

    def __init__(self, root: Path, *, mode: int = 0o640):
        self.root = Path(root)
        self.mode = mode
        self._root = os.fspath(self.root)

    def paths(self, label: str, message_id: str) -> tuple[Path, Path]:
        """(.xml, .json) of a message."""
        folder = self.root / check_label(label)
        check_id(message_id)
        return folder / f"{message_id}.xml", folder / f"{message_id}.json"

    def _files(self, label: str, message_id: str) -> tuple[str, str]:
        """``paths`` as strings: what an arrival uses (no name interned)."""
        folder = os.path.join(self._root, check_label(label))
        check_id(message_id)
        return os.path.join(folder, f"{message_id}.xml"), os.path.join(folder, f"{message_id}.json")

    def find(self, label: str, message_id: str) -> InboxEntry | None:
        """The message if its ``.xml`` is in the inbox (the systems have not taken it yet)."""
        xml, meta = self._files(label, message_id)
        if not os.path.isfile(xml):
            return None
        return InboxEntry(label, message_id, xml, meta, _read_json(meta))

    def deliver(self, label: str, message_id: str, xml: bytes, metadata: Mapping[str, Any]) -> InboxEntry:
        """Write the ``.json`` (replacing a leftover one), then the ``.xml``, each durably; when the ``.xml``
        fails (e.g. ENOSPC), the ``.json`` is removed and the error raised: all or nothing.

        Raises FileExistsError when the ``.xml`` exists already: a message is never rewritten."""
        xml_path, meta_path = self._files(label, message_id)
        if os.path.exists(xml_path):
            raise FileExistsError(f"{label}/{message_id}.xml is in the inbox already")
        _folder(self.root)
        _folder(os.path.dirname(xml_path))
        _write_new(meta_path, _json(metadata), self.mode, replace=True)
        try:
            _write_new(xml_path, bytes(xml), self.mode, replace=False)
        except FileExistsError:
            raise
        except BaseException:  # e.g. a full disk: the .json fitted, the .xml did not; take the .json away too
            if not os.path.exists(xml_path):  # (an .xml in place, whatever failed after, keeps its .json)
                try:
                    os.unlink(meta_path)
                except FileNotFoundError:
                    pass
                try:
                    fsync_dir(os.path.dirname(meta_path))
                except OSError:
                    pass
            raise
        return InboxEntry(label, message_id, xml_path, meta_path, dict(metadata))

    def entries(self) -> list[InboxEntry]:
        """Every message in the inbox (``.xml`` in place), by label and id."""
        found = []
        for label, folder in self._folders():
            for path in sorted(folder.glob("*.xml")):
                message_id = path.name[:-4]
                if _ID.match(message_id) and path.is_file():
                    meta = path.with_name(f"{message_id}.json")
                    found.append(InboxEntry(label, message_id, os.fspath(path), os.fspath(meta), _read_json(meta)))
        return found

    def orphans(self) -> list[tuple[str, str, Path]]:
        """(label, message id, path) of each ``.json`` without its ``.xml``: a write a crash interrupted,
        or a message whose ``.xml`` a system took first."""
        found = []
        for label, folder in self._folders():
            for meta in sorted(folder.glob("*.json")):
                message_id = meta.name[:-5]
                if _ID.match(message_id) and not meta.with_name(f"{message_id}.xml").exists():
                    found.append((label, message_id, meta))
        return found

    def remove_leftovers(self) -> list[Path]:
        """Remove this writer's own temporary files (what a crash left mid-write); call at start only."""
        return [path for _, folder in self._folders() for path in remove_temporaries(folder)]

    def remove(self, path: Path) -> None:
        """Remove one file of the inbox durably (an orphaned ``.json``)."""
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def _folders(self) -> list[tuple[str, Path]]:
        try:
            subs = sorted(p for p in self.root.iterdir() if p.is_dir() and _LABEL.match(p.name))
        except FileNotFoundError:
            return []
        return [(p.name, p) for p in subs]


def remove_temporaries(folder: Path) -> list[Path]:
    """Remove the hidden temporary files `_write_new` left in `folder` when a crash interrupted it."""
    removed = []
    try:
        names = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in names:
        if _TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    if removed:
        fsync_dir(Path(folder))
    return removed


def _read_json(path: AnyPath) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def quarantine(folder: Path, entity: bytes, report: Mapping[str, Any], at: datetime, *,
               mode: int = 0o640) -> Path:
    """Keep `entity` as ``<folder>/<UTC time>-<sha256 prefix>.p7m`` with `report` beside it as ``.json``;
    returns the ``.p7m`` path. Never overwrites: a second copy in the same microsecond gets ``-1``, ``-2``…"""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be timezone-aware")
    _folder(Path(folder))
    stem = f"{at.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}-{hashlib.sha256(entity).hexdigest()[:16]}"
    for n in range(1000):
        name = stem if n == 0 else f"{stem}-{n}"
        path = Path(folder) / f"{name}.p7m"
        try:
            _write_new(path, bytes(entity), mode, replace=False)
        except FileExistsError:
            continue
        _write_new(path.with_suffix(".json"), _json(report), mode, replace=True)
        return path
    raise FileExistsError(f"no free quarantine name for {stem}")
