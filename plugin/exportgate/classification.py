"""What a download is, for export purposes: the value the catalog hands to policy.

Release engineers tag artifacts in the classification manifest (see :mod:`exportgate.catalog`).
An artifact no manifest rule matches is :data:`UNCLASSIFIED`; policy packs decide what that gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Classes of software the 2010 general licenses speak of, and the kinds of personal communication
# they list (31 CFR 560.540(a), 538.533(a)).
PERSONAL_COMMUNICATIONS = "personal-communications"
CLASSES = (PERSONAL_COMMUNICATIONS, "communications", "anti-censorship", "other")
PERSONAL_COMMUNICATIONS_KINDS = (
    "instant-messaging", "chat", "email", "social-networking", "web-browsing", "blogging",
    "photo-sharing", "movie-sharing",
)
# Export Control Classification Numbers the packs reason about. Others are accepted if they look
# like an ECCN (e.g. 4D994); the policy treats anything not listed in a rule as not matching it.
KNOWN_ECCNS = ("EAR99", "5D992.c", "5D992", "5D002", "5D991", "4D994", "not-subject-to-ear")
PRICES = ("no-cost", "fee")


def is_eccn(value: str) -> bool:
    """A value a manifest or a pack may give as ``eccn``: one of :data:`KNOWN_ECCNS`, or the shape of an ECCN
    (``4D994``, ``5A992.c``, ``5D002.c.1``; no empty paragraphs like ``5D002..``)."""
    return value in KNOWN_ECCNS or _ECCN_SHAPE.fullmatch(value) is not None


_ECCN_SHAPE = re.compile(r"[0-9][A-E][0-9]{3}(?:\.[a-z0-9]+)*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    """The export classification of one artifact."""

    classified: bool
    """False when no manifest rule matched: the artifact is *unclassified*."""

    category: str | None = None
    """The class: ``personal-communications``, ``communications``, ``anti-censorship``, ``other``."""

    kinds: tuple[str, ...] = ()
    """For personal communications: ``instant-messaging``, ``chat``, ``email`` … (one or more)."""

    eccn: str | None = None
    """``EAR99``, ``5D992.c``, ``5D002``, ``not-subject-to-ear`` …"""

    price: str | None = None
    """``no-cost`` or ``fee``."""

    publicly_available: bool | None = None
    """Whether the software is publicly available (not behind a contract or login)."""

    note: str = ""
    """Free text from the release engineer."""

    rule: str | None = None
    """Which manifest rule matched: ``"manifest.yaml:12 (package signal)"``."""

    manifest: str | None = None
    """The manifest file and its content hash, e.g. ``"catalog.yaml@sha256:ab12…"``."""

    def to_dict(self) -> dict[str, object]:
        return {
            "classified": self.classified,
            "category": self.category,
            "kinds": list(self.kinds),
            "eccn": self.eccn,
            "price": self.price,
            "publicly_available": self.publicly_available,
            "note": self.note,
            "rule": self.rule,
            "manifest": self.manifest,
        }


UNCLASSIFIED = Classification(classified=False)
