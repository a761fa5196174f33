"""fold_case: what a case-insensitive origin treats as one letter, the gate treats as one letter."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable

import pytest

from exportgate.casefolding import fold_case

# Every character that some case mapping changes, and what it maps to (one character or several).
CASED = [c for c in map(chr, range(sys.maxunicode + 1))
         if not 0xD800 <= ord(c) <= 0xDFFF and (c.upper() != c or c.lower() != c or c.casefold() != c)]

MAPPINGS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,  # NTFS compares names through an upcase table
    "lower": str.lower,
    "casefold": str.casefold,  # APFS, ext4 casefold
    "upper then lower": lambda c: c.upper().lower(),
    "lower then upper": lambda c: c.lower().upper(),
}


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_characters_any_mapping_equates_fold_alike(mapping: str) -> None:
    equal: defaultdict[str, set[str]] = defaultdict(set)
    for c in CASED:
        equal[MAPPINGS[mapping](c)].add(c)
    apart = {image: sorted(chars) for image, chars in equal.items()
             if len({fold_case(c) for c in chars | {image}}) > 1}
    assert not apart


def test_folding_is_idempotent() -> None:
    assert [c for c in CASED if fold_case(fold_case(c)) != fold_case(c)] == []


def test_ascii_folds_as_lower() -> None:
    text = "".join(map(chr, range(128)))
    assert fold_case(text) == text.lower()


@pytest.mark.parametrize(("text", "folded"), [
    pytest.param("/tools/\u017fecret", "/tools/secret", id="long s"),
    pytest.param("/b\u0131tcoin", "/bitcoin", id="dotless i"),
    pytest.param("/STRA\u00dfE", "/strasse", id="sharp s"),
    pytest.param("/\u212a", "/k", id="kelvin sign"),
    pytest.param("/caf\u00c9", "/caf\u00e9", id="accented"),
])
def test_examples(text: str, folded: str) -> None:
    assert fold_case(text) == folded
