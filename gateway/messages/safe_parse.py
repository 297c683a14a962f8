"""Hardened reader for message files dropped by other systems.

Does: reads one regular file (size-capped; never follows a final symlink,
opens a device or blocks on a FIFO) and parses its bytes into an lxml tree
after cheap byte checks (size, blank, encoding, NUL, DOCTYPE).
Trusts: nothing in the input. Any DOCTYPE is refused, nothing external is
ever loaded, only UTF-8 is accepted; libxml2 is trusted to parse what is left
(DOCTYPE-free UTF-8, at most max_bytes) in bounded time and memory.
``load_trusted_schema`` is for our own XSDs: local includes, never the network.
Fails: with ``InputRejected`` (stable ``code``, one-sentence ``message``,
1-based ``line``/``column`` where known). Any other exception is a bug.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import urllib.parse
from typing import Final

from lxml import etree

__all__ = [
    "MAX_DEPTH",
    "MAX_MESSAGE_BYTES",
    "REJECTION_CODES",
    "InputRejected",
    "depth_rejection",
    "load_trusted_schema",
    "parse_message_bytes",
    "read_message_file",
]

MAX_MESSAGE_BYTES: int = 1_000_000
MAX_DEPTH: int = 64  # deepest element nesting allowed; our schemas need < 20

REJECTION_CODES: Final = frozenset(
    {
        "empty",
        "too-large",
        "not-a-regular-file",
        "unreadable",
        "encoding",
        "nul-byte",
        "doctype",
        "too-deep",
        "not-xml",
    }
)


class InputRejected(Exception):
    """The input is not a message we will even look at.

    ``code`` is a short stable slug (one of ``REJECTION_CODES``), ``message``
    one sentence an operator understands (no stack traces), ``line``/``column``
    1-based where known, else None.
    """

    code: str
    message: str
    line: int | None
    column: int | None

    def __init__(
        self, code: str, message: str, line: int | None = None, column: int | None = None
    ) -> None:
        if code not in REJECTION_CODES:  # a typo here would break callers' matching
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"InputRejected(code={self.code!r}, message={self.message!r}, "
            f"line={self.line!r}, column={self.column!r})"
        )

    def __reduce__(self):  # keep all fields when pickled (process pools)
        return (type(self), (self.code, self.message, self.line, self.column))


# --------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------

# O_NOFOLLOW: a symlink in the final component fails (ELOOP) instead of being
# followed. O_NONBLOCK: opening a FIFO without a writer returns at once instead
# of blocking. O_NOCTTY: a terminal device never becomes our controlling tty.
_OPEN_FLAGS: Final = (
    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
)
_READ_CHUNK: Final = 1 << 16


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a special file"


def _not_regular(mode: int) -> InputRejected:
    return InputRejected(
        "not-a-regular-file",
        f"The path is {_kind(mode)}, not a regular file; only regular files are read.",
    )


def _too_large(size: int | None, max_bytes: int) -> InputRejected:
    if size is None:
        what = f"The file grew beyond the limit of {max_bytes:,} bytes while being read."
    else:
        what = f"The file is {size:,} bytes, more than the limit of {max_bytes:,} bytes."
    return InputRejected("too-large", what)


def _unreadable(exc: OSError) -> InputRejected:
    reason = exc.strerror or type(exc).__name__
    return InputRejected("unreadable", f"The file cannot be read: {reason}.")


def read_message_file(path: str | os.PathLike, *, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Return the bytes of the regular file at ``path`` (at most ``max_bytes``).

    Never follows a symlink in the last path component, never opens devices,
    never blocks on a FIFO, and refuses an over-size file before reading it.
    """
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    path = os.fspath(path)
    # Cheap pre-check so we never even open a device, FIFO or socket (opening
    # some devices has side effects). The fstat below is the authoritative one.
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise _unreadable(exc) from None
    except ValueError:  # a NUL in the name: no file can have it
        raise InputRejected(
            "unreadable", "The file cannot be read: its name contains NUL."
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        # Swapped for a symlink (ELOOP) or a socket (ENXIO) since the lstat.
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                mode = None
            if mode is not None and not stat.S_ISREG(mode):
                raise _not_regular(mode) from None
        raise _unreadable(exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        # Size 0 also covers /proc-style pseudo files, which we must not read.
        if st.st_size == 0:
            raise InputRejected("empty", "The file is empty (0 bytes).")
        if st.st_size > max_bytes:
            raise _too_large(st.st_size, max_bytes)
        # Read at most max_bytes + 1: the file may have grown since fstat.
        # First read asks for size+1 only, so small files never make us
        # allocate a max_bytes buffer.
        remaining = max_bytes + 1
        want = min(remaining, st.st_size + 1)
        chunks = []
        while remaining > 0:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
            want = min(remaining, _READ_CHUNK)
    except OSError as exc:
        raise _unreadable(exc) from None
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) > max_bytes:
        raise _too_large(None, max_bytes)
    if not data:
        raise InputRejected("empty", "The file is empty (0 bytes).")
    return data


# --------------------------------------------------------------------------
# Byte-level checks
# --------------------------------------------------------------------------

_UTF8_BOM: Final = b"\xef\xbb\xbf"
_BLANK: Final = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*")
# Signatures from XML 1.0 Appendix F (autodetection of character encodings).
# UTF-32 before UTF-16: the UTF-32LE BOM starts with the UTF-16LE one.
_FOREIGN_SIGNATURES: Final = (
    (b"\x00\x00\xfe\xff", "a UTF-32 (big-endian) byte-order mark"),
    (b"\xff\xfe\x00\x00", "a UTF-32 (little-endian) byte-order mark"),
    (b"\xfe\xff", "a UTF-16 (big-endian) byte-order mark"),
    (b"\xff\xfe", "a UTF-16 (little-endian) byte-order mark"),
    (b"\x00\x00\x00<", "UTF-32 (big-endian) text"),
    (b"<\x00\x00\x00", "UTF-32 (little-endian) text"),
    (b"\x00<", "UTF-16 (big-endian) text"),
    (b"<\x00", "UTF-16 (little-endian) text"),
    (b"\x4c\x6f\xa7\x94", "EBCDIC text"),
)
_FOREIGN_PREFIXES: Final = tuple(sig for sig, _ in _FOREIGN_SIGNATURES)
_XML_DECL_ENCODING: Final = re.compile(rb"""encoding[ \t\r\n]*=[ \t\r\n]*(["'])(.*?)\1""", re.S)
_XML_DECL_STARTS: Final = (b"<?xml ", b"<?xml\t", b"<?xml\r", b"<?xml\n")  # not <?xml-stylesheet
_DOCTYPE: Final = b"<!DOCTYPE"  # XML spells it only this way (case-sensitive)


def _printable(text: str, limit: int = 160) -> str:
    """One line, no control characters, bounded: safe to put in a log line."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of a byte offset."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", "replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _check_bytes(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    if _BLANK.fullmatch(data):  # stops at the first non-blank byte: O(1) normally
        if data:
            raise InputRejected("empty", "The file contains only whitespace.")
        raise InputRejected("empty", "The file is empty (0 bytes).")

    if data.startswith(_FOREIGN_PREFIXES):
        what = next(name for sig, name in _FOREIGN_SIGNATURES if data.startswith(sig))
        raise InputRejected(
            "encoding", f"The file starts with {what}; messages must be UTF-8.", 1, 1
        )
    if not data.isascii():  # ASCII is UTF-8; isascii() is far cheaper than decoding
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, column = _line_col(data, exc.start)
            raise InputRejected(
                "encoding",
                f"The file is not valid UTF-8: byte 0x{data[exc.start]:02X} at byte offset "
                f"{exc.start} (line {line}, column {column}) cannot be decoded; "
                "messages must be UTF-8.",
                line,
                column,
            ) from None

    # A declaration naming another encoding would make libxml2 re-decode the
    # bytes (UTF-7 could even hide a DOCTYPE from the byte search below).
    body = data[3:] if data.startswith(_UTF8_BOM) else data
    if body.startswith(_XML_DECL_STARTS):
        end = body.find(b"?>")
        match = _XML_DECL_ENCODING.search(body, 0, end if end >= 0 else 200)
        if match:
            declared = match.group(2).decode("utf-8")
            if declared.lower() != "utf-8":
                raise InputRejected(
                    "encoding",
                    f"The XML declaration says encoding={_printable(declared, 40)!r}; "
                    "messages must be UTF-8.",
                    1,
                    None,
                )

    nul = data.find(b"\x00")
    if nul >= 0:
        line, column = _line_col(data, nul)
        raise InputRejected(
            "nul-byte",
            f"The file contains a NUL byte at byte offset {nul} (line {line}, column "
            f"{column}); XML text cannot contain NUL.",
            line,
            column,
        )

    # Refuse any DTD before libxml2 sees it: that one rule closes entity
    # expansion bombs, XXE and external DTD / parameter-entity fetches. It
    # also refuses "<!DOCTYPE" inside a comment or CDATA: acceptable, no
    # genuine message carries that text.
    # memchr for "!" first: ~0.3 us, against ~2 us for the substring search.
    doctype = data.find(_DOCTYPE) if b"!" in data else -1
    if doctype >= 0:
        line, column = _line_col(data, doctype)
        raise _doctype_rejection(line, column)


def _doctype_rejection(line: int | None, column: int | None) -> InputRejected:
    where = f" at line {line}, column {column}" if line is not None else ""
    return InputRejected(
        "doctype",
        f"The message contains a document type declaration (<!DOCTYPE){where}; "
        "DTDs and entity declarations are refused.",
        line,
        column,
    )


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


class _ExternalResourceRefused(Exception):
    pass


class _DenyAllResolver(etree.Resolver):
    """Refuses every external resource libxml2 asks for.

    With load_dtd=False and DOCTYPEs refused up front it should never be
    called. If it is, it raises (returning an empty string would make the
    parse succeed silently) and remembers the attempt, so the verdict is a
    rejection even if lxml were to swallow the exception.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attempted: str | None = None

    def resolve(self, system_url, public_id, context):
        self.attempted = system_url or public_id or "?"
        raise _ExternalResourceRefused(self.attempted)


def _new_parser() -> tuple[etree.XMLParser, _DenyAllResolver]:
    # Never pass collect_ids=False: with libxml2 2.14 that makes it read the
    # external DTD despite load_dtd=False (hangs on a FIFO).
    parser = etree.XMLParser(
        encoding="utf-8",  # ignore any declaration: we checked the bytes are UTF-8
        resolve_entities="internal",
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,  # keeps libxml2's own limits (depth 256, 10 MB text nodes)
        recover=False,
        remove_comments=True,
        remove_pis=True,
        # Whitespace between elements means nothing in our messages (no mixed content in the XSDs): not
        # keeping it as text nodes makes parsing, XSD validation and every walk cheaper (callgrind: 12 % of
        # parse + validate). Text of leaf elements is kept whole, whitespace-only text too.
        remove_blank_text=True,
    )
    resolver = _DenyAllResolver()
    parser.resolvers.add(resolver)
    return parser, resolver


# An element at depth MAX_DEPTH + 1 exists iff this path selects something.
# libxml2 evaluates it as a breadth-first walk over the top MAX_DEPTH + 1
# levels: ~6 us on a 5 KB message, ~10 ms on a 1 MB one.
_DEPTH_EXPR: Final = "(/*" + "/*" * MAX_DEPTH + ")[1]"

# Parser and XPath per thread: a shared lxml parser or XPath object holds a
# lock for each call (serializing all threads); a parser per call costs ~6 us
# more than reusing one. A parser that raised is dropped, never reused: lxml
# can carry state from a failed parse into the next one (seen with resolver
# exceptions in XMLSchema).
_per_thread = threading.local()


def _thread_parser() -> tuple[etree.XMLParser, _DenyAllResolver]:
    pair = getattr(_per_thread, "parser", None)
    if pair is None:
        pair = _per_thread.parser = _new_parser()
    return pair


def _too_deep_probe() -> etree.XPath:
    probe = getattr(_per_thread, "depth_probe", None)
    if probe is None:
        probe = _per_thread.depth_probe = etree.XPath(_DEPTH_EXPR)
    return probe


_LXML_POSITION_SUFFIX: Final = re.compile(r",? line \d+, column \d+\s*$")


def _syntax_rejection(exc: etree.XMLSyntaxError) -> InputRejected:
    # Use the exception itself, never parser.error_log: it may hold old entries.
    line, column = exc.position if exc.position else (None, None)
    line = line or None
    column = column or None
    detail = _LXML_POSITION_SUFFIX.sub("", (exc.msg or "").strip()) or "unknown error"
    detail = _printable(" ".join(detail.split()))
    where = f" (line {line}, column {column})" if line else ""
    if exc.code == etree.ErrorTypes.ERR_RESOURCE_LIMIT and "depth" in detail.lower():
        return InputRejected(
            "too-deep",
            f"Elements are nested more than {MAX_DEPTH} levels deep{where}; refused.",
            line,
            column,
        )
    return InputRejected(
        "not-xml", f"The file is not well-formed XML: {detail}{where}.", line, column
    )


def _parse_checked_bytes(data: bytes, check_depth: bool = True) -> etree._ElementTree:
    """Parse bytes that passed ``_check_bytes``; second-line checks follow."""
    parser, resolver = _thread_parser()
    try:
        root = etree.fromstring(data, parser)
    except BaseException as exc:
        _per_thread.parser = None
        if resolver.attempted is not None:
            raise _external_rejection(resolver.attempted) from None
        if isinstance(exc, etree.XMLSyntaxError):
            raise _syntax_rejection(exc) from None
        raise
    if resolver.attempted is not None:  # lxml swallowed the resolver's exception
        _per_thread.parser = None
        raise _external_rejection(resolver.attempted)
    tree = root.getroottree()
    # Second line behind the byte search: libxml2 saw a DOCTYPE after all.
    if tree.docinfo.internalDTD is not None:
        raise _doctype_rejection(None, None)
    if check_depth:
        rejection = depth_rejection(tree)
        if rejection is not None:
            raise rejection
    return tree


def depth_rejection(tree: etree._ElementTree) -> InputRejected | None:
    """``too-deep`` if elements nest deeper than MAX_DEPTH, else None.

    Costs ~10 µs per message. A caller that validates against our XSDs next
    may skip it on the way in (``check_depth=False``): a schema-valid message
    is shallow by construction, libxml2 refuses more than 256 levels anyway,
    and the caller asks here only when the schema has refused the document.
    """
    deep = _too_deep_probe()(tree)
    if not deep:
        return None
    line = deep[0].sourceline
    where = f" (line {line})" if line else ""
    return InputRejected(
        "too-deep",
        f"Elements are nested more than {MAX_DEPTH} levels deep{where}; refused.",
        line,
        None,
    )


def _external_rejection(url: str | None) -> InputRejected:
    return InputRejected(
        "doctype",
        f"The message tries to load an external resource ({_printable(url or '?', 80)!r}); "
        "DTDs and external references are refused.",
    )


def parse_message_bytes(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES,
                        check_depth: bool = True) -> etree._ElementTree:
    """Parse untrusted message bytes into a tree, or raise ``InputRejected``.

    Comments and processing instructions are dropped; nothing outside
    ``data`` is ever read. XInclude is not processed (never call
    ``xinclude()`` on the result).
    """
    if not isinstance(data, bytes):
        # A str would skip the encoding checks; bytearray/memoryview: convert first.
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    _check_bytes(data, max_bytes)
    return _parse_checked_bytes(data, check_depth)


# --------------------------------------------------------------------------
# Our own schemas
# --------------------------------------------------------------------------


class _LocalFilesOnlyResolver(etree.Resolver):
    """Lets xs:include/xs:import load local regular files; refuses the rest.

    libxml2 here is built without HTTP, so a network schemaLocation would be
    skipped with only a warning; refusing it makes a broken schema set loud.
    Non-regular files are refused because reading a FIFO would hang.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def resolve(self, system_url, public_id, context):
        url = system_url or ""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("", "file") and parts.netloc in ("", "localhost"):
            local = urllib.parse.unquote(parts.path) if parts.scheme else url
            try:
                if stat.S_ISREG(os.stat(local).st_mode):
                    return None  # let libxml2 load it the normal way
            except OSError:
                pass
        self.refused.append(url)
        raise _ExternalResourceRefused(url)


def load_trusted_schema(path: str | os.PathLike) -> etree.XMLSchema:
    """Compile one of our own XSDs (local includes/imports only, no network).

    Raises ``etree.XMLSchemaParseError`` (or ``etree.XMLSyntaxError`` /
    ``OSError``) if the schema set is broken or refers to anything non-local.
    """
    parser = etree.XMLParser(
        no_network=True,
        resolve_entities=False,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
    )
    resolver = _LocalFilesOnlyResolver()
    parser.resolvers.add(resolver)  # a fresh parser: see _per_thread on leaks
    try:
        doc = etree.parse(os.fspath(path), parser)
        schema = etree.XMLSchema(doc)
    except (etree.XMLSchemaParseError, _ExternalResourceRefused) as exc:
        if resolver.refused:
            raise etree.XMLSchemaParseError(
                f"schema {os.fspath(path)!r} refers to a non-local resource "
                f"{resolver.refused[0]!r}; only local regular files may be included"
            ) from None
        raise exc
    if resolver.refused:  # belt and braces: never accept a partially loaded set
        raise etree.XMLSchemaParseError(
            f"schema {os.fspath(path)!r} refers to a non-local resource {resolver.refused[0]!r}"
        )
    return schema
