"""Hostile-input tests for the hardened message reader (gateway.messages.safe_parse).

Every hostile case runs the reader in a child process under a 512 MB address
space limit and a wall-clock timeout, so a hang, a crash or a memory blow-up
fails the test instead of taking pytest down. Oracles, checked for every case:

* the child exits normally, with nothing on stderr, and reports the expected
  ``InputRejected.code`` (or acceptance) as JSON;
* read+parse took < 1 s inside the child, and its peak RSS (VmHWM) stayed small;
* the child opened nothing but the given path (Python audit hook), and did
  not even open it when it is not a regular file;
* a per-test secret file was never read (its atime, which also catches reads
  done by libxml2 in C) and its content never shows up in the output;
* the loopback HTTP spy server received no connection at all.

The ``test_control_*`` tests prove these oracles are live: a careless parser
run through the same harness leaks the secret (and moves its atime), an
actual fetch reaches the spy, a FIFO hang trips the timeout, and an uncapped
read blows the RSS bound.

Set ``-v`` to get a table of per-case time and peak memory at the end.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import pickle
import random
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

from gateway.messages import safe_parse
from gateway.messages.safe_parse import (
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    InputRejected,
    load_trusted_schema,
    parse_message_bytes,
    read_message_file,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 10.0
CHILD_ADDRESS_SPACE = 512 * 1024 * 1024
MAX_CASE_SECONDS = 1.0  # read + parse inside the child; measured cases take ms
MAX_CHILD_RSS_KB = 128 * 1024  # interpreter + lxml ~19 MB, a 1 MB message tree ~+30 MB
MB = 1024 * 1024

# --------------------------------------------------------------------------
# Harness: child process, HTTP spy, per-test environment
# --------------------------------------------------------------------------

CHILD_SCRIPT = r"""
import json, sys, time
mode, target = sys.argv[1], sys.argv[2]
from lxml import etree
from gateway.messages import safe_parse
opened = []  # every Python-level open() after the imports (os.open raises "open")
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
out = {"code": None, "module": safe_parse.__file__}
t0 = time.perf_counter()
try:
    if mode == "reader":
        tree = safe_parse.parse_message_bytes(safe_parse.read_message_file(target))
        out["xml"] = etree.tostring(tree, encoding="unicode")
    elif mode == "reader-stale-lstat":  # the path is swapped right after the lstat
        import os, stat
        real_lstat, calls = os.lstat, []
        def stale_lstat(path, *args, **kwargs):
            calls.append(path)
            if len(calls) == 1:  # what the pre-check saw: a plain 10-byte file
                return os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 10, 0, 0, 0))
            return real_lstat(path, *args, **kwargs)
        os.lstat = stale_lstat
        tree = safe_parse.parse_message_bytes(safe_parse.read_message_file(target))
        out["xml"] = etree.tostring(tree, encoding="unicode")
    elif mode == "schema":
        safe_parse.load_trusted_schema(target)
        out["xml"] = "schema loaded"
    elif mode == "unsafe-lxml":  # control: a careless parser, to prove the oracles
        parser = etree.XMLParser(**json.loads(sys.argv[3]))
        out["xml"] = etree.tostring(etree.parse(target, parser), encoding="unicode")
    elif mode == "read-all":  # control: what a reader without a size cap does
        out["xml"] = str(len(open(target, "rb").read()))
    elif mode == "urlopen":  # control: proves the HTTP spy counts requests
        import urllib.request
        out["xml"] = urllib.request.urlopen(target, timeout=5).read().decode()
    else:
        raise SystemExit("unknown mode " + mode)
except safe_parse.InputRejected as exc:
    out.update(code=exc.code, message=exc.message, line=exc.line, column=exc.column)
except etree.XMLSchemaParseError as exc:
    out.update(code="schema-error", message=str(exc))
out["seconds"] = time.perf_counter() - t0
out["opened"] = opened[:]
# VmHWM, not ru_maxrss: the latter keeps the forked parent's RSS across exec.
with open("/proc/self/status") as status:
    out["maxrss_kb"] = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
print(json.dumps(out))
"""

SPY_SERVER_SCRIPT = r"""
import http.server, sys
log = open(sys.argv[1], "a", buffering=1)
class Server(http.server.ThreadingHTTPServer):
    def verify_request(self, request, client_address):
        # Runs in the accept loop, in accept order, before any request is read.
        log.write(f"connection {client_address[1]}\n")
        return True
class Spy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'<!ENTITY leak "FETCHED-BY-HTTP">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *args):
        pass
server = Server(("127.0.0.1", 0), Spy)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)  # looked up here: the child only calls it


def _child_preexec(drop_dac: bool) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if drop_dac and os.geteuid() == 0:
            # root ignores file modes; without these capabilities in the bounding
            # set the exec'd child cannot, so chmod 000 means "unreadable" again.
            for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
                if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    os._exit(97)

    return preexec


@dataclass
class ChildResult:
    out: dict
    stdout: str
    stderr: str
    wall_seconds: float


def run_child(
    mode: str,
    target: str | os.PathLike,
    *extra: str,
    cwd: Path,
    timeout: float = CHILD_TIMEOUT_S,
    drop_dac: bool = False,
) -> ChildResult:
    """Run CHILD_SCRIPT under the memory limit; TimeoutExpired means it hung."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO_ROOT),  # test this checkout, whatever is installed
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, mode, os.fspath(target), *extra],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        preexec_fn=_child_preexec(drop_dac),
    )
    wall = time.perf_counter() - start
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{stderr[-3000:]}"
    lines = stdout.strip().splitlines()
    assert lines, f"child printed nothing; stderr:\n{stderr[-3000:]}"
    return ChildResult(json.loads(lines[-1]), stdout, stderr, wall)


class HttpSpy:
    """A loopback HTTP server in its own process that logs every connection."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.probe_lines = 0
        log.touch()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SPY_SERVER_SCRIPT, str(log)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), "HTTP spy did not start"
        self.port = int(line)

    def url(self, path: str = "/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _logged_ports(self) -> list[str]:
        return [line.split()[1] for line in self.log.read_text().splitlines()]

    def connections(self) -> int:
        """Connections so far, not counting our own sync probes.

        A connection made by a child that has exited sits in the accept
        queue already; the spy logs in accept order, so once a fresh probe of
        ours shows up in the log, every earlier connection is there too.
        """
        start = len(self._logged_ports())
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as probe:
            port = str(probe.getsockname()[1])
        deadline = time.monotonic() + 5
        while port not in (logged := self._logged_ports())[start:]:
            assert time.monotonic() < deadline, "HTTP spy stopped logging"
            time.sleep(0.001)
        self.probe_lines += 1
        return len(logged) - self.probe_lines

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def http_spy(tmp_path_factory):
    spy = HttpSpy(tmp_path_factory.mktemp("http-spy") / "connections.log")
    yield spy
    spy.stop()


@dataclass
class Env:
    """What a case builder may use: a scratch dir, a secret, the HTTP spy."""

    dir: Path
    secret: str
    secret_path: Path
    http: HttpSpy
    secret_atime_ns: int = 0

    def write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def fifo(self, name: str = "pipe") -> Path:
        path = self.dir / name
        os.mkfifo(path)
        return path


@pytest.fixture
def env(tmp_path, http_spy) -> Env:
    secret = f"SECRET-{uuid.uuid4().hex}"
    secret_path = tmp_path / "secret.txt"
    secret_path.write_text(f"<leak>{secret}</leak>\n")
    # atime far older than mtime: with relatime any read of the secret, also
    # one by libxml2 in C where no Python audit hook sees it, moves the atime.
    atime_ns = 1_000_000_000
    os.utime(secret_path, ns=(atime_ns, secret_path.stat().st_mtime_ns))
    work = tmp_path / "work"
    work.mkdir()
    return Env(work, secret, secret_path, http_spy, atime_ns)


_MEASUREMENTS: list[tuple[str, str, float, float, int]] = []


@pytest.fixture(scope="module", autouse=True)
def _timing_table(request):
    """Print per-case time and peak RSS at the end of the module with -v."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or request.config.get_verbosity() < 1 or not _MEASUREMENTS:
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        reporter.write_line("")
        reporter.write_sep("-", "hostile input: time in child (read+parse), wall, peak RSS")
        for case_id, verdict, seconds, wall, rss in _MEASUREMENTS:
            reporter.write_line(
                f"{case_id:45} {verdict:20} {seconds * 1e3:9.3f} ms "
                f"{wall:6.2f} s {rss / 1024:6.1f} MB"
            )


def check_common_oracles(
    result: ChildResult, env: Env, connections_before: int, target: str | os.PathLike
) -> None:
    out = result.out
    assert set(out["opened"]) <= {os.fspath(target)}, f"opened other files: {out['opened']}"
    assert env.secret_path.stat().st_atime_ns == env.secret_atime_ns, "the secret file was read"
    assert result.stderr == "", f"child wrote to stderr:\n{result.stderr[-3000:]}"
    assert Path(out["module"]).resolve().is_relative_to(REPO_ROOT), out["module"]
    assert env.secret not in result.stdout, "secret file content leaked into the output"
    assert env.http.connections() == connections_before, "the HTTP spy was contacted"
    assert out["seconds"] < MAX_CASE_SECONDS, f"took {out['seconds']:.3f} s"
    assert out["maxrss_kb"] < MAX_CHILD_RSS_KB, f"peak RSS {out['maxrss_kb']} kB"


# --------------------------------------------------------------------------
# The case table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Env], Path | str]  # returns the path handed to the reader
    expect: str | None  # InputRejected.code, or None: the document is accepted
    check: Callable[[dict, Env], None] | None = None  # extra assertions on the output
    drop_dac: bool = False


def doc(content: bytes | Callable[[Env], bytes], name: str = "message.xml"):
    def build(env: Env) -> Path:
        return env.write(name, content(env) if callable(content) else content)

    return build


def xml_is(expected: str) -> Callable[[dict, Env], None]:
    def check(out: dict, env: Env) -> None:
        assert out["xml"] == expected

    return check


def message_contains(*fragments: str) -> Callable[[dict, Env], None]:
    def check(out: dict, env: Env) -> None:
        for fragment in fragments:
            assert fragment in out["message"], out["message"]

    return check


def has_position(out: dict, env: Env) -> None:
    assert out["line"] is not None and out["line"] >= 1, out
    assert out["column"] is not None and out["column"] >= 1, out
    assert "line" in out["message"], out["message"]


def no_inclusion(out: dict, env: Env) -> None:
    assert "XInclude}include" in out["xml"] or "xi:include" in out["xml"], out["xml"]
    assert env.secret not in out["xml"]


def fmt(template: str) -> Callable[[Env], bytes]:
    """A document whose text names the secret file, the spy's URL or a FIFO."""

    def content(env: Env) -> bytes:
        fields = {"secret_path": env.secret_path, "url": env.http.url()}
        if "{fifo}" in template:
            fields["fifo"] = env.fifo()
        return template.format(**fields).encode()

    return content


def billion_laughs() -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    return (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n'
        + "\n".join(entities)
        + "\n]>\n<lolz>&lol9;</lolz>"
    ).encode()


def quadratic_blowup() -> bytes:
    # 50 KB entity referenced 15,000 times: ~95 KB of input, 750 MB if expanded.
    return b'<!DOCTYPE r [<!ENTITY a "' + b"x" * 50_000 + b'">]><r>' + b"&a;" * 15_000 + b"</r>"


def nested(depth: int) -> bytes:
    return b"<a>" * depth + b"</a>" * depth


def exactly(size: int) -> bytes:
    data = b"<r>" + b" " * (size - 7) + b"</r>"
    assert len(data) == size
    return data


def many_small_elements(size: int) -> bytes:
    count = (size - 7) // 4
    data = b"<r>" + b"<a/>" * count + b"</r>"
    return data + b" " * (size - len(data))


def sparse_file(size: int) -> Callable[[Env], Path]:
    def build(env: Env) -> Path:
        path = env.write("huge.xml", b"<r>")
        os.truncate(path, size)  # sparse: created instantly, reads as NULs
        return path

    return build


def junk_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def junk_utf8(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    # valid UTF-8, no NUL, no surrogates: gets past the byte checks to libxml2
    return "".join(chr(rng.randrange(1, 0xD800)) for _ in range(size)).encode()


def symlink_to(target: Callable[[Env], Path]) -> Callable[[Env], Path]:
    def build(env: Env) -> Path:
        link = env.dir / "link.xml"
        link.symlink_to(target(env))
        return link

    return build


def unix_socket(env: Env) -> Path:
    path = env.dir / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


def unreadable_file(env: Env) -> Path:
    path = env.write("noperm.xml", b"<r/>")
    path.chmod(0)
    return path


def secret_not_in_xml(out: dict, env: Env) -> None:
    assert env.secret not in out.get("xml", "")


SMALL = b"<bericht><naam>Jansen</naam></bericht>"
SMALL_SERIALIZED = SMALL.decode()
DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'
BOM = b"\xef\xbb\xbf"
DUTCH = "<r><naam>Çelik-van Dijk, Zoë</naam><plaats>\u2019s-Hertogenbosch</plaats></r>"

CASES = [
    # --- DTD and entity attacks: all refused by the DOCTYPE rule ----------------
    Case("billion-laughs", doc(billion_laughs()), "doctype", has_position),
    Case("quadratic-blowup", doc(quadratic_blowup()), "doctype"),
    Case(
        "xxe-file-entity",
        doc(fmt('<!DOCTYPE r [<!ENTITY e SYSTEM "file://{secret_path}">]><r>&e;</r>')),
        "doctype",
    ),
    Case(
        "xxe-file-entity-in-attribute",
        doc(fmt('<!DOCTYPE r [<!ENTITY e SYSTEM "{secret_path}">]><r a="&e;"/>')),
        "doctype",
    ),
    Case(
        "xxe-http-entity",
        doc(fmt('<!DOCTYPE r [<!ENTITY e SYSTEM "{url}">]><r>&e;</r>')),
        "doctype",
    ),
    Case(
        "external-dtd-file",
        doc(fmt('<!DOCTYPE r SYSTEM "file://{secret_path}"><r>&leak;</r>')),
        "doctype",
    ),
    Case("external-dtd-relative-path", doc(b'<!DOCTYPE r SYSTEM "../secret.txt"><r/>'), "doctype"),
    Case("external-dtd-http", doc(fmt('<!DOCTYPE r SYSTEM "{url}"><r>&leak;</r>')), "doctype"),
    Case(
        "external-dtd-public-id-http",
        doc(fmt('<!DOCTYPE r PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "{url}"><r/>')),
        "doctype",
    ),
    # libxml2 2.14 + collect_ids=False reads this and hangs: the timeout is the oracle.
    Case("external-dtd-fifo", doc(fmt('<!DOCTYPE r SYSTEM "{fifo}"><r/>')), "doctype"),
    Case(
        "parameter-entity-dev-zero",
        doc(b'<!DOCTYPE r [<!ENTITY % p SYSTEM "/dev/zero"> %p;]><r/>'),
        "doctype",
    ),
    Case(
        "parameter-entity-fifo",
        doc(fmt('<!DOCTYPE r [<!ENTITY % p SYSTEM "{fifo}"> %p;]><r/>')),
        "doctype",
    ),
    Case(
        "parameter-entity-http",
        doc(fmt('<!DOCTYPE r [<!ENTITY % p SYSTEM "{url}"> %p;]><r/>')),
        "doctype",
    ),
    Case("doctype-without-entities", doc(b"<!DOCTYPE r><r/>"), "doctype", has_position),
    Case(
        "doctype-after-bom-and-declaration",
        doc(BOM + DECL + b"<!DOCTYPE r [<!ENTITY x 'y'>]>\n<r>&x;</r>"),
        "doctype",
        message_contains("line 2, column 1"),
    ),
    Case("doctype-after-a-prolog-comment", doc(DECL + b"<!-- x -->\n<!DOCTYPE r [<!ENTITY x 'y'>]><r>&x;</r>"),
         "doctype", message_contains("line 3, column 1")),
    Case("doctype-after-a-processing-instruction", doc(b"<?pi <r/> ?><!DOCTYPE r [<!ENTITY x 'y'>]><r>&x;</r>"),
         "doctype"),
    # Conservative on purpose: the byte search does not know about CDATA.
    Case("doctype-text-inside-cdata", doc(b"<r><![CDATA[<!DOCTYPE r>]]></r>"), "doctype"),
    Case(
        "utf7-declaration-smuggling-a-doctype",
        doc(
            b'<?xml version="1.0" encoding="UTF-7"?>\n'
            b"+ADw-!DOCTYPE r +AFs-+ADw-!ENTITY e +ACI-x+ACI-+AD4-+AF0-+AD4-\n"
            b"+ADw-r+AD4-+ACY-e+ADs-+ADw-/r+AD4-"
        ),
        "encoding",
    ),
    # --- nesting depth ---------------------------------------------------------
    Case("nesting-100k-deep", doc(nested(100_000)), "too-deep", has_position),
    Case("nesting-257-deep-libxml2-limit", doc(nested(257)), "too-deep"),
    Case(f"nesting-{MAX_DEPTH + 1}-deep", doc(nested(MAX_DEPTH + 1)), "too-deep"),
    Case(f"nesting-{MAX_DEPTH}-deep-accepted", doc(nested(MAX_DEPTH)), None),
    # --- size ------------------------------------------------------------------
    Case("sparse-200MB-file", sparse_file(200 * MB), "too-large", message_contains("209,715,200")),
    Case("exactly-at-limit-accepted", doc(exactly(MAX_MESSAGE_BYTES)), None),
    Case("one-byte-over-limit", doc(exactly(MAX_MESSAGE_BYTES + 1)), "too-large"),
    Case("many-tiny-elements-at-limit", doc(many_small_elements(MAX_MESSAGE_BYTES)), None),
    # --- encodings -------------------------------------------------------------
    Case(
        "utf16-le-with-bom",
        doc(("<r>é</r>").encode("utf-16")),
        "encoding",
        message_contains("UTF-16"),
    ),
    Case("utf16-be-with-bom", doc(b"\xfe\xff" + "<r>é</r>".encode("utf-16-be")), "encoding"),
    Case("utf32-with-bom", doc("<r/>".encode("utf-32")), "encoding", message_contains("UTF-32")),
    Case(
        "utf16-no-bom-declared",
        doc('<?xml version="1.0" encoding="UTF-16"?><r/>'.encode("utf-16-le")),
        "encoding",
    ),
    Case("utf16-no-bom-no-declaration", doc("<r>x</r>".encode("utf-16-be")), "encoding"),
    Case("ebcdic", doc('<?xml version="1.0"?><r/>'.encode("cp500")), "encoding"),
    Case(
        "iso-8859-1-declared-ascii-body",
        doc(b"<?xml version='1.0' encoding='ISO-8859-1'?><r>Jansen</r>"),
        "encoding",
        message_contains("ISO-8859-1"),
    ),
    Case(
        "iso-8859-1-declared-latin1-body",
        doc(b'<?xml version="1.0" encoding="ISO-8859-1"?><r>Jos\xe9</r>'),
        "encoding",
    ),
    Case(
        "windows-1252-declared",
        doc(b'<?xml version="1.0" encoding="windows-1252"?><r/>'),
        "encoding",
    ),
    Case(
        "invalid-utf8-byte",
        doc(b"<r>\n  <naam>\xff</naam>\n</r>"),
        "encoding",
        message_contains("0xFF", "byte offset 12", "line 2, column 9"),
    ),
    Case("utf8-overlong-slash", doc(b"<r>\xc0\xaf</r>"), "encoding"),
    Case("utf8-encoded-surrogate", doc(b"<r>\xed\xa0\x80</r>"), "encoding"),
    Case("utf8-truncated-sequence-at-end", doc(b"<r/>\xe2\x82"), "encoding"),
    Case(
        "mixed-utf8-and-latin1",
        doc(DECL + "<r>Caf\u00e9 en ".encode() + b"Caf\xe9</r>"),
        "encoding",
        has_position,
    ),
    Case("gzip-compressed-xml", doc(gzip.compress(SMALL)), "encoding"),
    # --- NUL, empty ------------------------------------------------------------
    Case("nul-byte-in-text", doc(b"<r>a\x00b</r>"), "nul-byte", message_contains("byte offset 4")),
    Case("only-nul-bytes", doc(b"\x00" * 64), "nul-byte"),
    Case("empty-file", doc(b""), "empty"),
    Case("whitespace-only", doc(b" \r\n\t\n  "), "empty"),
    Case("utf8-bom-only", doc(BOM + b"\n"), "empty"),
    Case("proc-pseudo-file", lambda env: "/proc/self/status", "empty"),
    # --- not XML ---------------------------------------------------------------
    Case("truncated-document", doc(DECL + b"<r>\n  <naam>Jan"), "not-xml", has_position),
    Case("binary-junk-random-bytes", doc(junk_bytes(20240601, 4096)), "encoding"),
    Case("binary-junk-valid-utf8", doc(junk_utf8(20240601, 4096)), "not-xml", has_position),
    Case("content-is-a-url", doc(lambda env: env.http.url().encode()), "not-xml", has_position),
    Case(
        "content-is-an-absolute-path",
        doc(b"/etc/passwd"),
        "not-xml",
        lambda out, env: assert_not_in("root:", out),
    ),
    Case("content-is-a-relative-path", doc(b"../secret.txt"), "not-xml"),
    Case("undeclared-entity", doc(b"<r>&xxe;</r>"), "not-xml", has_position),
    Case("lowercase-doctype", doc(b'<!doctype r SYSTEM "/dev/zero"><r/>'), "not-xml"),
    Case("declaration-not-at-start", doc(b" " + DECL + b"<r/>"), "not-xml"),
    Case("two-root-elements", doc(b"<r/><r/>"), "not-xml"),
    Case("control-character", doc(b"<r>\x01</r>"), "not-xml"),
    Case("char-ref-to-nul", doc(b"<r>&#0;</r>"), "not-xml"),
    Case("unterminated-comment", doc(b"<r><!-- </r>"), "not-xml"),
    # --- XInclude, PIs, schema hints: kept inert --------------------------------
    Case(
        "xinclude-secret-as-text",
        doc(
            fmt(
                '<r xmlns:xi="http://www.w3.org/2001/XInclude">'
                '<xi:include href="file://{secret_path}" parse="text"/></r>'
            )
        ),
        None,
        no_inclusion,
    ),
    Case(
        "xinclude-secret-as-xml",
        doc(
            fmt(
                '<r xmlns:xi="http://www.w3.org/2001/XInclude">'
                '<xi:include href="../../secret.txt"/></r>'
            )
        ),
        None,
        no_inclusion,
    ),
    Case(
        "xinclude-http",
        doc(fmt('<r xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="{url}"/></r>')),
        None,
        no_inclusion,
    ),
    Case(
        "xml-stylesheet-pi-http",
        doc(fmt('<?xml-stylesheet type="text/xsl" href="{url}"?><r/>')),
        None,
        xml_is("<r/>"),
    ),
    Case(
        "xsi-schema-location-http",
        doc(
            fmt(
                '<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                'xsi:noNamespaceSchemaLocation="{url}"/>'
            )
        ),
        None,
    ),
    Case(
        "comments-and-pis-stripped",
        doc(
            b"<?pi before?><!-- c1 --><r><!-- c2 --><a>1<?pi inside?>2</a></r>"
            b"<!-- c3 --><?pi after?>"
        ),
        None,
        xml_is("<r><a>12</a></r>"),
    ),
    # --- the path itself -------------------------------------------------------
    Case("fifo-as-path", lambda env: env.fifo(), "not-a-regular-file", message_contains("FIFO")),
    Case(
        "directory-as-path",
        lambda env: env.dir,
        "not-a-regular-file",
        message_contains("directory"),
    ),
    Case(
        "symlink-to-secret",
        symlink_to(lambda env: env.secret_path),
        "not-a-regular-file",
        message_contains("symbolic link"),
    ),
    Case(
        "symlink-to-valid-message",
        symlink_to(lambda env: env.write("ok.xml", SMALL)),
        "not-a-regular-file",
    ),
    Case("dangling-symlink", symlink_to(lambda env: env.dir / "missing"), "not-a-regular-file"),
    Case("unix-socket-as-path", unix_socket, "not-a-regular-file", message_contains("socket")),
    Case(
        "dev-zero-as-path",
        lambda env: "/dev/zero",
        "not-a-regular-file",
        message_contains("device"),
    ),
    Case("dev-null-as-path", lambda env: "/dev/null", "not-a-regular-file"),
    Case(
        "nonexistent-path",
        lambda env: env.dir / "nope.xml",
        "unreadable",
        message_contains("No such file"),
    ),
    Case(
        "path-through-a-file",
        lambda env: env.write("plain.xml", SMALL) / "child.xml",
        "unreadable",
        message_contains("Not a directory"),
    ),
    Case(
        "name-too-long",
        lambda env: env.dir / ("x" * 300),
        "unreadable",
        message_contains("too long"),
    ),
    Case(
        "permission-denied",
        unreadable_file,
        "unreadable",
        message_contains("Permission denied"),
        drop_dac=True,
    ),
    # --- well-formed messages are accepted -----------------------------------------
    Case("minimal-no-declaration", doc(SMALL), None, xml_is(SMALL_SERIALIZED)),
    Case("with-utf8-declaration", doc(DECL + SMALL), None, xml_is(SMALL_SERIALIZED)),
    Case(
        "with-lowercase-utf8-declaration",
        doc(b"<?xml version='1.0' encoding='utf-8' standalone='yes'?>" + SMALL),
        None,
        xml_is(SMALL_SERIALIZED),
    ),
    Case("with-utf8-bom", doc(BOM + SMALL), None, xml_is(SMALL_SERIALIZED)),
    Case("with-utf8-bom-and-declaration", doc(BOM + DECL + SMALL), None, xml_is(SMALL_SERIALIZED)),
    Case(
        "non-ascii-utf8",
        doc(DUTCH.encode()),
        None,
        xml_is(DUTCH),
    ),
]


def assert_not_in(fragment: str, out: dict) -> None:
    assert fragment not in json.dumps(out)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_hostile_case(case: Case, env: Env, record_property) -> None:
    """Run one case through read_message_file + parse_message_bytes in a child.

    The verdict must be the expected InputRejected code (or acceptance),
    reached in bounded time and memory, without leaking the secret file or
    touching the network.
    """
    target = case.build(env)
    before = env.http.connections()
    result = run_child("reader", target, cwd=env.dir, drop_dac=case.drop_dac)
    out = result.out
    verdict = out["code"] or "accepted"
    _MEASUREMENTS.append((case.id, verdict, out["seconds"], result.wall_seconds, out["maxrss_kb"]))
    record_property("child_seconds", out["seconds"])
    record_property("child_maxrss_kb", out["maxrss_kb"])

    assert out["code"] == case.expect, out
    if case.expect is not None:
        message = out["message"]
        assert message and "\n" not in message and "Traceback" not in message, message
        assert len(message) < 400, message
    check_common_oracles(result, env, before, target)
    if case.expect == "not-a-regular-file":  # settled by lstat: not even opened
        assert out["opened"] == [], out["opened"]
    if case.check is not None:
        case.check(out, env)


SWAPPED_PATHS = {
    "fifo": lambda env: env.fifo(),
    "directory": lambda env: env.dir,
    "symlink-to-secret": symlink_to(lambda env: env.secret_path),
    "unix-socket": unix_socket,
    "dev-zero": lambda env: "/dev/zero",
}


@pytest.mark.parametrize("build", SWAPPED_PATHS.values(), ids=SWAPPED_PATHS.keys())
def test_path_swapped_after_lstat_is_still_refused(build, env: Env) -> None:
    """The lstat pre-check can race; O_NOFOLLOW, O_NONBLOCK and fstat still hold.

    The child's lstat is made to report a regular file, as if the path had
    been replaced between the pre-check and the open. A blocking open of the
    FIFO would hang: the timeout is the oracle there.
    """
    target = build(env)
    before = env.http.connections()
    result = run_child("reader-stale-lstat", target, cwd=env.dir)
    assert result.out["code"] == "not-a-regular-file", result.out
    check_common_oracles(result, env, before, target)


def test_case_ids_are_unique() -> None:
    """Duplicate ids would silently shadow a case in reports."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_every_rejection_code_is_exercised() -> None:
    """The table covers every code the API promises (and nothing else)."""
    assert {c.expect for c in CASES} - {None} == set(safe_parse.REJECTION_CODES)


# --------------------------------------------------------------------------
# Controls: the oracles above can fail
# --------------------------------------------------------------------------


def test_control_secret_oracle_catches_a_careless_parser(env: Env) -> None:
    """A parser with load_dtd/resolve_entities on leaks the secret via XXE."""
    path = doc(fmt('<!DOCTYPE r [<!ENTITY e SYSTEM "file://{secret_path}">]><r>&e;</r>'))(env)
    careless = json.dumps({"load_dtd": True, "resolve_entities": True, "no_network": True})
    result = run_child("unsafe-lxml", path, careless, cwd=env.dir)
    assert env.secret in result.stdout
    # libxml2 read it in C: invisible to the audit hook, visible in the atime
    assert str(env.secret_path) not in result.out["opened"]
    assert env.secret_path.stat().st_atime_ns != env.secret_atime_ns


def test_control_http_spy_counts_requests(env: Env) -> None:
    """The spy logs a connection when something does fetch the URL."""
    before = env.http.connections()
    result = run_child("urlopen", env.http.url("/probe"), cwd=env.dir)
    assert "FETCHED-BY-HTTP" in result.out["xml"]
    assert env.http.connections() == before + 1


def test_control_timeout_catches_the_collect_ids_fifo_hang(env: Env) -> None:
    """collect_ids=False makes libxml2 2.14 open an external DTD: a FIFO hangs it."""
    path = doc(fmt('<!DOCTYPE r SYSTEM "{fifo}"><r/>'))(env)
    careless = json.dumps({"load_dtd": False, "no_network": True, "collect_ids": False})
    with pytest.raises(subprocess.TimeoutExpired):
        run_child("unsafe-lxml", path, careless, cwd=env.dir, timeout=2.0)


def test_control_rss_bound_catches_reading_a_huge_file(env: Env) -> None:
    """Reading the sparse 200 MB file without a cap blows the RSS bound."""
    path = sparse_file(200 * MB)(env)
    result = run_child("read-all", path, cwd=env.dir)
    assert result.out["maxrss_kb"] > MAX_CHILD_RSS_KB


# --------------------------------------------------------------------------
# Trusted schemas: local includes work, nothing else is fetched
# --------------------------------------------------------------------------

XS = 'xmlns:xs="http://www.w3.org/2001/XMLSchema"'


def test_load_trusted_schema_follows_local_includes(tmp_path: Path) -> None:
    """A schema split over local files compiles and validates."""
    (tmp_path / "types.xsd").write_text(
        f'<xs:schema {XS}><xs:simpleType name="Naam">'
        '<xs:restriction base="xs:string"><xs:maxLength value="5"/></xs:restriction>'
        "</xs:simpleType></xs:schema>"
    )
    main = tmp_path / "main.xsd"
    main.write_text(
        f'<xs:schema {XS}><xs:include schemaLocation="types.xsd"/>'
        '<xs:element name="naam" type="Naam"/></xs:schema>'
    )
    schema = load_trusted_schema(main)
    assert schema.validate(parse_message_bytes(b"<naam>Jan</naam>"))
    assert not schema.validate(parse_message_bytes(b"<naam>Jansen</naam>"))


@pytest.mark.parametrize("location", ["http", "fifo"], ids=["import-over-http", "import-from-fifo"])
def test_load_trusted_schema_refuses_non_local_imports(location: str, env: Env) -> None:
    """An import over HTTP or from a FIFO is an error, never a fetch or a hang."""
    where = env.http.url("/other.xsd") if location == "http" else f"file://{env.fifo()}"
    main = env.write(
        "main.xsd",
        f'<xs:schema {XS}><xs:import namespace="urn:other" schemaLocation="{where}"/>'
        '<xs:element name="r" type="xs:string"/></xs:schema>'.encode(),
    )
    before = env.http.connections()
    result = run_child("schema", main, cwd=env.dir)
    assert result.out["code"] == "schema-error", result.out
    assert "non-local" in result.out["message"]
    assert env.http.connections() == before


# --------------------------------------------------------------------------
# In-process checks of the API and of the second lines of defence
# --------------------------------------------------------------------------


def test_input_rejected_fields_str_and_pickle() -> None:
    """InputRejected carries code/message/line/column, prints its message, pickles."""
    exc = InputRejected("not-xml", "The file is not well-formed XML.", 3, 7)
    assert (exc.code, exc.message, exc.line, exc.column) == ("not-xml", exc.message, 3, 7)
    assert str(exc) == "The file is not well-formed XML."
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.code, clone.message, clone.line, clone.column) == ("not-xml", exc.message, 3, 7)
    with pytest.raises(ValueError):
        InputRejected("no-such-code", "x")


def test_parse_requires_bytes() -> None:
    """A str would bypass the encoding checks, so it is a programming error."""
    with pytest.raises(TypeError):
        parse_message_bytes("<r/>")  # type: ignore[arg-type]


def test_max_bytes_is_honoured(tmp_path: Path) -> None:
    """Both entry points apply a caller-supplied limit, inclusive."""
    path = tmp_path / "m.xml"
    path.write_bytes(b"<r>12</r>")
    assert read_message_file(path, max_bytes=9) == b"<r>12</r>"
    assert parse_message_bytes(b"<r>12</r>", max_bytes=9).getroot().text == "12"
    for call in (
        lambda: read_message_file(path, max_bytes=8),
        lambda: parse_message_bytes(b"<r>12</r>", max_bytes=8),
    ):
        with pytest.raises(InputRejected) as info:
            call()
        assert info.value.code == "too-large"


def test_path_with_nul_is_unreadable() -> None:
    """A NUL in the path is an unreadable input, not a ValueError from os."""
    with pytest.raises(InputRejected) as info:
        read_message_file("inbox/a\x00b.xml")
    assert info.value.code == "unreadable"


def test_file_growing_after_fstat_is_still_capped(tmp_path: Path, monkeypatch) -> None:
    """The read is capped at max_bytes + 1 even if fstat reported a small size."""
    path = tmp_path / "growing.xml"
    path.write_bytes(b"<r>" + b" " * 100 + b"</r>")
    real_fstat = os.fstat

    def stale_fstat(fd):
        st = real_fstat(fd)
        return os.stat_result((*st[:6], 10, *st[7:10]))  # st_size as it was earlier

    monkeypatch.setattr(os, "fstat", stale_fstat)
    with pytest.raises(InputRejected) as info:
        read_message_file(path, max_bytes=50)
    assert info.value.code == "too-large"
    assert "grew" in info.value.message


def test_deny_all_resolver_turns_a_resolve_attempt_into_rejection(env: Env, monkeypatch) -> None:
    """If libxml2 ever asked for an external resource, the verdict is a rejection.

    Forces the situation by swapping in a parser that does load DTDs, keeping
    our resolver: the parse must end in InputRejected, not in the secret.
    """

    def dtd_loading_parser():
        parser = etree.XMLParser(load_dtd=True, resolve_entities=True, no_network=True)
        resolver = safe_parse._DenyAllResolver()
        parser.resolvers.add(resolver)
        return parser, resolver

    monkeypatch.setattr(safe_parse, "_new_parser", dtd_loading_parser)
    monkeypatch.setattr(safe_parse._per_thread, "parser", None, raising=False)
    data = f'<!DOCTYPE r [<!ENTITY e SYSTEM "file://{env.secret_path}">]><r>&e;</r>'.encode()
    with pytest.raises(InputRejected) as info:
        safe_parse._parse_checked_bytes(data)  # past the byte-level DOCTYPE check
    assert info.value.code == "doctype"
    assert "external resource" in info.value.message


def test_doctype_is_refused_even_past_the_byte_check() -> None:
    """Second line: a tree that came with a DTD is refused after parsing."""
    with pytest.raises(InputRejected) as info:
        safe_parse._parse_checked_bytes(b"<!DOCTYPE r><r/>")
    assert info.value.code == "doctype"


def test_declared_encoding_is_ignored_by_the_parser() -> None:
    """Second line: the parser decodes as UTF-8 whatever the declaration says.

    A plain lxml parser honours encoding="UTF-7" and finds the DOCTYPE that
    the byte search cannot see; ours does not.
    """
    data = (
        b'<?xml version="1.0" encoding="UTF-7"?>\n'
        b"+ADw-!DOCTYPE r +AFs-+ADw-!ENTITY e +ACI-PWNED+ACI-+AD4-+AF0-+AD4-\n"
        b"+ADw-r+AD4-+ACY-e+ADs-+ADw-/r+AD4-"
    )
    assert b"<!DOCTYPE" not in data
    plain = etree.fromstring(data, etree.XMLParser()).getroottree()
    assert plain.docinfo.doctype and plain.getroot().text == "PWNED"  # the danger is real
    with pytest.raises(InputRejected) as info:
        safe_parse._parse_checked_bytes(data)
    assert info.value.code == "not-xml"


def test_rejections_do_not_leak_into_later_parses() -> None:
    """A rejected input leaves no state behind that affects the next one."""
    bad = [b"<r>", b"<r>&e;</r>", nested(300), b"<a></b>"]
    for data in bad:
        with pytest.raises(InputRejected):
            parse_message_bytes(data)
        assert etree.tostring(parse_message_bytes(SMALL)) == SMALL


def test_a_parser_that_failed_is_not_reused() -> None:
    """The per-thread parser is replaced after any failed parse, kept otherwise."""
    parse_message_bytes(SMALL)
    kept = safe_parse._thread_parser()
    parse_message_bytes(SMALL)
    assert safe_parse._thread_parser() is kept
    with pytest.raises(InputRejected):
        parse_message_bytes(b"<r>")
    assert safe_parse._thread_parser() is not kept


def test_concurrent_parses_are_independent() -> None:
    """Threads parsing good and bad messages at once each get their own verdict."""
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            if rng.random() < 0.5:
                if etree.tostring(parse_message_bytes(SMALL)) != SMALL:
                    errors.append("wrong tree")
            else:
                try:
                    parse_message_bytes(nested(MAX_DEPTH + 1))
                    errors.append("accepted a too-deep document")
                except InputRejected as exc:
                    if exc.code != "too-deep":
                        errors.append(exc.code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_whitespace_between_elements_is_dropped_and_leaf_text_is_kept_whole():
    """The parser drops blank text between elements (cheaper parse, validation and walks): right only while no
    XSD allows mixed content, which this test holds. A leaf's text, whitespace-only or not, is kept as written."""
    xsd = Path(__file__).resolve().parents[2] / "xsd"
    for path in sorted(xsd.glob("*.xsd")):
        schema = etree.parse(str(path))
        assert not schema.xpath("//*[@mixed='true' or @mixed='1']"), f"{path.name} allows mixed content"
    root = safe_parse.parse_message_bytes(b"<a>\n  <b>  </b>\n  <c> x  y </c>\n  <d>\n</d>\n</a>").getroot()
    assert [(e.tag, e.text, e.tail) for e in root.iter()] == [
        ("a", None, None), ("b", "  ", None), ("c", " x  y ", None), ("d", "\n", None)]
