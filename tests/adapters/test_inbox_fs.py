"""The inbox and quarantine folders: whole files or none, metadata first, never overwritten."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone

import pytest

from adapters.inbox_fs import InboxWriter, quarantine, remove_temporaries

AT = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=timezone.utc)
META = {"message_id": "7d968203-3405-4522-aa89-77c0a56f8f64", "sender": "pi:PI-VUGHT", "mic": "x"}
MID = META["message_id"]


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_message_is_written_as_its_xml_and_json(tmp_path):
    inbox = InboxWriter(tmp_path / "inbox")
    entry = inbox.deliver("meldingsbericht", MID, b"<m/>", META)
    folder = tmp_path / "inbox" / "meldingsbericht"
    assert listing(folder) == [f"{MID}.json", f"{MID}.xml"]  # no temporary file left behind
    assert entry.xml_path.read_bytes() == b"<m/>"
    assert json.loads(entry.meta_path.read_text()) == META
    assert os.stat(entry.xml_path).st_mode & 0o777 == 0o640
    found = inbox.find("meldingsbericht", MID)
    assert found is not None and found.metadata == META and found.xml_path == entry.xml_path
    assert inbox.find("basisdocument", MID) is None
    assert [(e.label, e.message_id) for e in inbox.entries()] == [("meldingsbericht", MID)]


def test_a_message_is_never_rewritten(tmp_path):
    inbox = InboxWriter(tmp_path)
    inbox.deliver("meldingsbericht", MID, b"<first/>", META)
    with pytest.raises(FileExistsError):
        inbox.deliver("meldingsbericht", MID, b"<second/>", {**META, "mic": "y"})
    assert (tmp_path / "meldingsbericht" / f"{MID}.xml").read_bytes() == b"<first/>"
    assert json.loads((tmp_path / "meldingsbericht" / f"{MID}.json").read_text())["mic"] == "x"


def test_the_json_is_in_place_before_the_xml(tmp_path):
    """The .xml's name taken at the last step (a dangling link, which `exists()` does not see): the write
    fails there, after the .json, and leaves no temporary file. A consumer never sees an .xml without
    its metadata; the name that was taken is not overwritten."""
    inbox = InboxWriter(tmp_path)
    folder = tmp_path / "meldingsbericht"
    folder.mkdir()
    os.symlink("/nonexistent/target", folder / f"{MID}.xml")
    with pytest.raises(FileExistsError):
        inbox.deliver("meldingsbericht", MID, b"<m/>", META)
    assert listing(folder) == [f"{MID}.json", f"{MID}.xml"]
    assert json.loads((folder / f"{MID}.json").read_text()) == META
    assert os.readlink(folder / f"{MID}.xml") == "/nonexistent/target"


def test_a_json_without_its_xml_is_an_orphan_until_the_message_is_written(tmp_path):
    inbox = InboxWriter(tmp_path)
    folder = tmp_path / "basisdocument"
    folder.mkdir()
    (folder / f"{MID}.json").write_text('{"left": "by a crash"}')
    assert inbox.entries() == []
    assert inbox.orphans() == [("basisdocument", MID, folder / f"{MID}.json")]
    inbox.deliver("basisdocument", MID, b"<b/>", META)  # the leftover .json is replaced
    assert json.loads((folder / f"{MID}.json").read_text()) == META
    assert inbox.orphans() == []
    inbox.remove(folder / f"{MID}.json")
    assert listing(folder) == [f"{MID}.xml"]


def test_leftover_temporaries_are_removed_and_nothing_else(tmp_path):
    inbox = InboxWriter(tmp_path)
    inbox.deliver("ontslagbericht", MID, b"<o/>", META)
    folder = tmp_path / "ontslagbericht"
    (folder / f".{MID}.xml.0123456789abcdef.tmp").write_bytes(b"<half")
    (folder / ".consumer-is-writing").write_bytes(b"theirs")
    removed = inbox.remove_leftovers()
    assert [p.name for p in removed] == [f".{MID}.xml.0123456789abcdef.tmp"]
    assert listing(folder) == [".consumer-is-writing", f"{MID}.json", f"{MID}.xml"]


@pytest.mark.parametrize("label, message_id", [
    ("../etc", MID), ("Meldingsbericht", MID), ("", MID),
    ("meldingsbericht", "../x"), ("meldingsbericht", ".hidden"), ("meldingsbericht", "a/b"),
    ("meldingsbericht", "a" * 129), ("meldingsbericht", ""), ("meldingsbericht", "a..b"),
])
def test_names_that_could_leave_the_folder_are_refused(tmp_path, label, message_id):
    with pytest.raises(ValueError):
        InboxWriter(tmp_path).deliver(label, message_id, b"<m/>", META)
    assert listing(tmp_path) == []


def test_quarantine_keeps_every_copy_with_its_reason(tmp_path):
    q = tmp_path / "quarantine"
    first = quarantine(q, b"sealed bytes", {"reason_code": "not-for-us"}, AT)
    second = quarantine(q, b"sealed bytes", {"reason_code": "not-for-us", "again": True}, AT)
    assert first.name == f"20261129T120000123456Z-{hashlib.sha256(b'sealed bytes').hexdigest()[:16]}.p7m"
    assert second.name == first.stem + "-1.p7m"
    assert first.read_bytes() == second.read_bytes() == b"sealed bytes"
    assert json.loads(first.with_suffix(".json").read_text()) == {"reason_code": "not-for-us"}
    assert json.loads(second.with_suffix(".json").read_text())["again"] is True
    assert len(listing(q)) == 4
    with pytest.raises(ValueError):
        quarantine(q, b"x", {}, datetime(2026, 1, 1))
    (q / ".x.p7m.fedcba9876543210.tmp").write_bytes(b"half")
    assert [p.name for p in remove_temporaries(q)] == [".x.p7m.fedcba9876543210.tmp"]
    assert len(listing(q)) == 4
