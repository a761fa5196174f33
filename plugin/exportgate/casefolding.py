"""Case folding for a case-insensitive origin: one function for request paths, manifest rules and gated globs.

With ``case_insensitive_paths`` the gate must treat as one artifact every spelling the origin opens as one file.
``str.lower()`` is not enough: it keeps ``ſ`` (long s) apart from ``s`` and ``ı`` (dotless i) apart from ``i``,
while NTFS's upcase table (``ſ`` -> ``S``), APFS's case folding (``ſ`` -> ``s``) and Python's own
``re.IGNORECASE`` treat each pair as one letter: ``/tools/ſecret-1.0.tar.gz`` would miss the rule written for
``/tools/secret-1.0.tar.gz`` and be served that very file. ``str.casefold()`` alone still keeps ``ı`` apart from
``i`` (both upper-case to ``I``).

:func:`fold_case` upper-cases, then case-folds. It puts together every two characters that upper-casing,
lower-casing or case folding puts together (tests/unit/test_casefolding.py checks all of Unicode), it is
idempotent (a folded path folds to itself, so paths and rules folded in different places still compare equal), and
on ASCII it is ``lower()``. It folds more than any one file system does (``ß`` and ``ss`` become one): a rule may
then also match a name its origin keeps apart, which errs towards the rule, never away from it.
"""

from __future__ import annotations


def fold_case(text: str) -> str:
    """``text`` as a case-insensitive origin compares it (module docstring)."""
    if text.isascii():
        return text.lower()
    return text.upper().casefold()


__all__ = ["fold_case"]
