"""The sweep for personal data (issue 6, item 9): what the test messages say about persons, and searching
every observable output for it. No pytest here; `test_e2e_privacy_sweep.py` runs the flow and the sweep.

Personal data is read out of the very XML files a test drops (lxml), so the list never goes stale: every
BSN, given and family name, other name (contact persons, care providers, employers…; the sending
institution's own name is public and left out) and date of birth — the latter in ISO (1989-04-23) and
Dutch (23-04-1989) form.

Two kinds of search, because much of what is swept is ciphertext or base64:
- `text`: logs, HTML, JSON, headers, decoded text parts, database cells — every needle; names whole-word
  and case-insensitive, numbers and dates as substrings;
- `binary`: raw files (the store's pages, maildir files, queue files, encrypted payloads) — only needles of
  at least 8 bytes, exact: a 3-letter first name turns up by chance in megabytes of random bytes, a BSN or
  a date of birth does not.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.policy
import html
import json
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from lxml import etree

#: elements that hold a name of a person or of an organisation that tells something about the person
NAME_ELEMENTS = frozenset({"voornamen", "geslachtsnaam", "naam"})
#: parents whose `naam` is public (the sending institution): it is the party's own configured name
PUBLIC_NAME_PARENTS = frozenset({"penitentiaireInrichting"})
BIRTH_ELEMENTS = frozenset({"geboortedatum", "geboortedatumKind"})
BSN_ELEMENTS = frozenset({"burgerservicenummer"})
BINARY_MIN = 8


@dataclass(frozen=True)
class Needle:
    kind: str  #: bsn | name | birth date
    value: str

    def forms(self) -> list[str]:
        if self.kind == "birth date":
            y, m, d = self.value.split("-")
            return [self.value, f"{d}-{m}-{y}"]
        return [self.value]


def personal_data(xml_documents: Iterable[bytes]) -> list[Needle]:
    """Every BSN, name and date of birth in these messages."""
    found: set[Needle] = set()
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    for data in xml_documents:
        root = etree.fromstring(data, parser)
        for e in root.iter():
            if not isinstance(e.tag, str) or not (e.text or "").strip():
                continue
            name, text = etree.QName(e).localname, e.text.strip()
            parent = e.getparent()
            if name in BSN_ELEMENTS:
                found.add(Needle("bsn", text))
            elif name in BIRTH_ELEMENTS:
                found.add(Needle("birth date", text))
            elif name in NAME_ELEMENTS and not (
                    name == "naam" and parent is not None and etree.QName(parent).localname in PUBLIC_NAME_PARENTS):
                found.add(Needle("name", text))
                if name == "voornamen":  # each given name on its own too
                    found.update(Needle("name", part) for part in text.split() if len(part) > 2)
    return sorted(found, key=lambda n: (n.kind, n.value))


@dataclass
class Sweep:
    """Searches outputs for the needles; every hit is kept as (where, kind, value) for one final report."""

    needles: list[Needle]
    hits: list[tuple[str, str, str]] = field(default_factory=list)
    swept: dict[str, int] = field(default_factory=dict)  #: per category: how many items were searched

    def __post_init__(self) -> None:
        self._text = []
        for n in self.needles:
            for form in n.forms():
                pattern = (rf"(?<!\w){re.escape(form)}(?!\w)" if n.kind == "name" else re.escape(form))
                self._text.append((n, re.compile(pattern, re.IGNORECASE)))
        self._binary = [(n, form.encode()) for n in self.needles for form in n.forms()
                        if len(form.encode()) >= BINARY_MIN]

    def _count(self, category: str) -> None:
        self.swept[category] = self.swept.get(category, 0) + 1

    def found_in_text(self, text: str) -> list[Needle]:
        return sorted({n for n, pattern in self._text if pattern.search(text)}, key=lambda n: n.value)

    def found_in_bytes(self, data: bytes) -> list[Needle]:
        return sorted({n for n, form in self._binary if form in data}, key=lambda n: n.value)

    def text(self, category: str, where: str, text: str) -> None:
        self._count(category)
        text = html.unescape(text)
        for n, pattern in self._text:
            if m := pattern.search(text):
                context = text[max(0, m.start() - 60):m.end() + 60].replace("\n", " ")
                self.hits.append((f"{category}: {where}", n.kind, f"{n.value!r} in …{context}…"))

    def binary(self, category: str, where: str, data: bytes) -> None:
        self._count(category)
        for n, form in self._binary:
            if (at := data.find(form)) >= 0:
                context = data[max(0, at - 60):at + len(form) + 60].decode("utf-8", "replace").replace("\n", " ")
                self.hits.append((f"{category}: {where}", n.kind, f"{n.value!r} in …{context}…"))

    # -- what is swept, by kind of output

    def log_file(self, where: str, path: Path) -> int:
        """A daemon's log: every line must be a JSON object (structlog), and none may hold personal data.
        Returns the number of lines."""
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        for i, line in enumerate(lines, 1):
            try:
                event = json.loads(line)
            except ValueError:
                self.hits.append((f"log: {where} line {i}", "not a JSON line", line[:200]))
                event = None
            # the decoded form too: JSON escapes non-ASCII letters of names
            self.text("log line", f"{where} line {i}", line if event is None else
                      line + "\n" + json.dumps(event, ensure_ascii=False))
        return len(lines)

    def plain_log(self, where: str, path: Path) -> None:
        """A mail server's log (not ours, so any format)."""
        self.text("mail server log", where, path.read_text(errors="replace"))

    def mail(self, where: str, raw: bytes) -> None:
        """A raw mail: every header of every part (decoded), every text part (decoded), the rest as bytes."""
        self.binary("raw mail", where, raw)
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        for i, part in enumerate(message.walk()):
            headers = "\n".join(f"{k}: {_decoded(v)}" for k, v in part.items())
            self.text("mail header", f"{where} part {i}", headers)
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True) or b""
            if part.get_content_maintype() in ("text", "message") or part.get_content_type().endswith(
                    ("disposition-notification", "delivery-status", "rfc822-headers")):
                self.text("mail text part", f"{where} part {i}", payload.decode("utf-8", "replace"))
            else:
                self.binary("mail binary part", f"{where} part {i}", payload)

    def tree(self, category: str, folder: Path, *, exclude: Iterable[Path] = ()) -> None:
        """Every file under `folder` as bytes (maildirs with their index caches, the Postfix queue…)."""
        skip = [p.resolve() for p in exclude]
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if any(path.resolve().is_relative_to(s) for s in skip):
                continue
            try:
                data = path.read_bytes()
            except (PermissionError, FileNotFoundError):  # a socket, or renamed by Dovecot meanwhile
                continue
            self.binary(category, str(path.relative_to(folder)), data)

    def sqlite(self, where: str, db: Path) -> int:
        """The store: its files as bytes (with the WAL), and every cell of every table as text.
        Returns the number of rows."""
        for path in sorted(db.parent.glob(db.name + "*")):
            self.binary("store file", path.name, path.read_bytes())
        rows = 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    rows += 1
                    for cell in row:
                        if isinstance(cell, str):
                            self.text("store cell", f"{where} {table}", cell)
                        elif isinstance(cell, bytes):
                            self.binary("store cell", f"{where} {table}", cell)
        conn.close()
        return rows


def _decoded(value) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return str(value)


# -- the dashboard, as a browser without JavaScript sees it


async def login(session: aiohttp.ClientSession, base: str, name: str, password: str) -> None:
    form = await (await session.get(f"{base}/login")).text()
    token = re.search(r"name='login_token' value='([^']+)'", form).group(1)
    r = await session.post(f"{base}/login", data={"login_token": token, "name": name, "password": password,
                                                  "next": "/"})
    assert r.status == 200 and "<h1>Overview</h1>" in await r.text(), (name, r.status)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, allow_redirects=False) as r:
        return r.status, await r.text()


# -- the CLI, in this process (typer's runner: a child process would cost ~1.2 s of imports a call)


def invoke(*args: str) -> SimpleNamespace:
    import structlog
    from typer.testing import CliRunner

    from gateway.cli import app

    saved = structlog.get_config()  # the command configures logging onto the runner's stream
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        structlog.configure(**saved)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def prove_it_sees(needles: list[Needle], folder: Path, delivered: Path) -> None:
    """Each way of sweeping finds a needle put where it looks (so a clean sweep means clean, not blind):
    a log line with the name JSON-escaped, a mail whose subject is an encoded word, a store cell, and the
    receiver's inbox copy of a delivered message (`delivered`: a real one)."""
    bsn = next(n for n in needles if n.kind == "bsn")
    name = next(n for n in needles if n.kind == "name" and " " in n.value)
    birth = next(n for n in needles if n.kind == "birth date")

    def hits(work) -> set[str]:
        probe = Sweep(needles)
        work(probe)
        return {kind for _, kind, _ in probe.hits}

    log = folder / "canary.log"
    log.write_text(json.dumps({"event": "x", "who": name.value}) + "\nnot json\n")
    assert hits(lambda s: s.log_file("canary", log)) == {"name", "not a JSON line"}
    subject = email.header.Header(name.value, "utf-8").encode()
    raw = (f"Subject: {subject}\r\nContent-Type: text/plain\r\n\r\nborn {birth.forms()[1]}\r\n").encode()
    assert hits(lambda s: s.mail("canary", raw)) == {"name", "birth date"}
    db = folder / "canary.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("INSERT INTO t VALUES (?)", (f"about {bsn.value}",))
    conn.close()
    assert hits(lambda s: s.sqlite("canary", db)) == {"bsn"}
    assert {"bsn", "birth date"} <= hits(lambda s: s.tree("inbox", delivered))
