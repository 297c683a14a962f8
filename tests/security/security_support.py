"""Helpers of the security suite: how many examples a fuzzer runs, and byte mutations."""

from __future__ import annotations

from hypothesis import strategies as st

#: set by conftest.pytest_configure from `--soak`
SOAK = False


def fuzz_examples(normal: int, soak: int = 10_000) -> int:
    """`normal` in the suite, `soak` with --soak. Read when the test module is imported (after configure)."""
    return soak if SOAK else normal


#: bytes that mean something to MIME, XML, base64 or ASN.1 parsers
TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b":", b";", b"=", b"--", b"\r\n\r\n", b" ", b"\t", b"\xff", b"\x80",
          b"<", b">", b"&", b"&amp;", b"&#0;", b"&#x110000;", b"]]>", b"<![CDATA[", b"<!--", b"-->", b"<?xml",
          b"<!DOCTYPE x [<!ENTITY e 'x'>]>", b"<!ENTITY", b"xmlns:x='urn:x'", b"\"", b"'", b"/>", b"</",
          b"Content-Type: multipart/mixed; boundary=x\r\n\r\n", b"Content-Transfer-Encoding: base64\r\n",
          b"boundary=\"\"", b"\x30\x80", b"\x30\x84\xff\xff\xff\xff", b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02",
          b"\xa0\x80", b"\x00\x00", b"\x02\x01\x00", b"+", b"/", b"==", b"\xef\xbb\xbf", b"\xfe\xff"]


OPS = ["flip", "set", "insert", "insert-random", "delete", "dup", "cut", "swap"]

#: one edit: (operation, position, bit or byte value, token, random bytes, length, second position). Drawn
#: whole, whatever the input: what is drawn never depends on the bytes (hypothesis replays and shrinks
#: reliably), positions are taken modulo the length when applied.
EDIT = st.tuples(st.sampled_from(OPS), st.integers(0, 1 << 24), st.integers(0, 255), st.sampled_from(TOKENS),
                 st.binary(min_size=1, max_size=64), st.integers(1, 256), st.integers(0, 1 << 24))


def apply_edits(original: bytes, edits) -> bytes:
    raw = bytearray(original)
    for op, pos, value, token, noise, n, pos2 in edits:
        at = pos % (len(raw) + 1)
        if op == "flip" and at < len(raw):
            raw[at] ^= 1 << (value % 8)
        elif op == "set" and at < len(raw):
            raw[at] = value
        elif op == "insert":
            raw[at:at] = token
        elif op == "insert-random":
            raw[at:at] = noise
        elif op == "delete":
            del raw[at:at + min(n, 64)]
        elif op == "dup":
            raw[at:at] = raw[at:at + n]
        elif op == "cut":
            del raw[at:]
        elif op == "swap" and len(raw) > 2:
            other = pos2 % len(raw)
            k = min(n, 32)
            a, b = bytes(raw[at:at + k]), bytes(raw[other:other + k])
            raw[at:at + len(a)], raw[other:other + len(b)] = b, a
    return bytes(raw)


def mutated(originals: list[bytes], *, max_ops: int = 8):
    """One of `originals` after 1..max_ops random edits: flip, insert a token, delete, duplicate, cut, swap."""
    return st.builds(lambda i, edits: apply_edits(originals[i], edits),
                     st.integers(0, len(originals) - 1), st.lists(EDIT, min_size=1, max_size=max_ops))
