"""The shipped examples: every valid one passes here and in an independent XSD
implementation (xmlschema); every invalid one fails for the reason it is named after."""

from __future__ import annotations

import tomllib
from functools import cache

import pytest
import xmlschema
from lxml import etree

from paths import EXAMPLES, ROOT

VALID = sorted((EXAMPLES / "valid").rglob("*.xml"))
INVALID_DIR = EXAMPLES / "invalid"
EXPECTED = tomllib.loads((INVALID_DIR / "expected.toml").read_text(encoding="utf-8"))


@cache
def _independent_schema(type_name: str) -> xmlschema.XMLSchema10:
    return xmlschema.XMLSchema10(str(ROOT / "xsd" / f"{type_name}-1.0.xsd"))


def test_there_are_examples_of_every_kind():
    """At least a dossier of five and one flat example per type, and a real set of broken ones."""
    assert len(VALID) >= 11
    assert len(EXPECTED) >= 25


@pytest.mark.parametrize("path", VALID, ids=lambda p: str(p.relative_to(EXAMPLES / "valid")))
def test_valid_example_passes(validator, path):
    """Each valid example passes XSD and every rule, and says what it is."""
    verdict = validator.validate_file(path)
    assert verdict.valid, [str(p) for p in verdict.problems]
    assert verdict.message.message_id in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", VALID, ids=lambda p: str(p.relative_to(EXAMPLES / "valid")))
def test_valid_example_passes_an_independent_xsd_implementation(path):
    """xmlschema (pure Python, not libxml2) agrees that the valid examples fit their schema."""
    # the file is trusted here (our own example); never hand untrusted input to xmlschema
    root_name = etree.QName(etree.parse(str(path)).getroot()).localname
    _independent_schema(root_name).validate(str(path))


def test_every_invalid_file_has_an_expectation_and_vice_versa():
    """No broken example without a stated reason, no reason without its file."""
    files = {p.name for p in INVALID_DIR.iterdir() if p.name not in ("expected.toml", "README.md")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=str)
def test_invalid_example_fails_for_its_named_reason(validator, name):
    """The first problem reported is the one the file is named after, at the stated place."""
    expect = EXPECTED[name]
    verdict = validator.validate_file(INVALID_DIR / name)
    assert not verdict.valid
    codes = [p.code for p in verdict.problems]
    assert expect["code"] in codes, (codes, [str(p) for p in verdict.problems])
    if expect["code"] != "schema":  # one broken thing, one rule (an XSD error may cascade)
        assert set(codes) == {expect["code"]}, [str(p) for p in verdict.problems]
    if expect.get("path"):
        paths = [p.path for p in verdict.problems if p.code == expect["code"]]
        assert expect["path"] in paths, paths
    for p in verdict.problems:
        assert p.message and "{urn:" not in p.message


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e["code"] == "schema"), ids=str)
def test_schema_problems_are_located(validator, name):
    """XSD failures carry a line number and a namespace-free element path."""
    verdict = validator.validate_file(INVALID_DIR / name)
    first = verdict.problems[0]
    assert first.line and first.line > 1
    assert first.path and "{" not in first.path and ":" not in first.path
