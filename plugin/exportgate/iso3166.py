"""ISO 3166-1 alpha-2 country codes and ISO 3166-2 subdivision codes.

Used to reject a typo such as ``IRN``, ``XX`` or ``UA-34`` (for Crimea's ``UA-43``) in a pack, a manifest, an
authorization or an override: a misspelt destination would silently never match, and a restriction that never
matches is an allow. Subdivision codes are checked against the standard's list as ``pycountry`` carries it (from
Debian's iso-codes), not only for their shape.
"""

from __future__ import annotations

import functools
import re

# Officially assigned ISO 3166-1 alpha-2 codes (249), plus XK (Kosovo, user-assigned but used by MaxMind and
# registries).
COUNTRIES = frozenset("""
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO
JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR
MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO
RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV
TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK
""".split())

_SUBDIVISION = re.compile(r"^([A-Z]{2})-([A-Z0-9]{1,3})$")


def is_country(code: str) -> bool:
    return code in COUNTRIES


def is_subdivision(code: str) -> bool:
    return code in _subdivisions()


@functools.cache
def _subdivisions() -> frozenset[str]:
    import pycountry  # about 0.1 s to load the list: only where a config names a region

    return frozenset(subdivision.code for subdivision in pycountry.subdivisions)


def check_code(code: str) -> str | None:
    """``None`` when ``code`` is a country or subdivision code; otherwise what is wrong with it."""
    if isinstance(code, bool):  # YAML 1.1 reads NO (Norway), and ON, OFF, YES, as true/false
        return f"expected an ISO 3166 code, got {str(code).lower()}: quote the code ('NO' for Norway)"
    if not isinstance(code, str):
        return f"expected an ISO 3166 code, got {code!r}"
    if is_country(code) or is_subdivision(code):
        return None
    shape = _SUBDIVISION.match(code)
    if shape and shape.group(1) in COUNTRIES:
        return (f"no region {code} in ISO 3166-2: check the code against the standard's list for "
                f"{shape.group(1)} (a misspelt region never matches a client)")
    if code.upper() != code and (is_country(code.upper()) or is_subdivision(code.upper())):
        return f"unknown code {code!r}: ISO 3166 codes are upper case ({code.upper()!r})"
    if len(code) == 3 and code.isalpha():
        return f"unknown country code {code!r}: use ISO 3166-1 alpha-2 (two letters, e.g. IR), not alpha-3"
    return f"unknown country or subdivision code {code!r} (ISO 3166-1 alpha-2 like IR, or ISO 3166-2 like UA-43)"
