"""Corrupt geo databases: how often opening or reading one kills the process, the gate against maxminddb alone.

maxminddb's C reader crashes the process (SIGSEGV) on some corrupt files, where an error was due. The gate opens a
file through checks of its own first (``exportgate.mmdbfile``): the pure-Python reader's metadata and probe lookups,
and map keys that must be text. This flips random bytes in (and sometimes truncates) the test databases built from
geodata/networks.yaml, then, in a child process per file, opens each corrupted file and looks up one address of
every network in networks.yaml: once through the gate's locator, once with ``maxminddb.open_database`` alone (the
baseline). A crash is a child killed by a signal; "at open" if opening alone already kills it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from exportgate import geodata  # noqa: E402
from results import machine, write_section  # noqa: E402

BUILT = 1764288000  # 2025-11-28: a fixed build date, so the same seed corrupts the same bytes
OUTCOMES = ("refused at open", "loaded", "crashed at open", "crashed at a lookup")


def corruptions(good: bytes, count: int, seed: int) -> list[bytes]:
    """``count`` copies of ``good`` with 1 to 8 random bytes changed, a fifth of them also cut short."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(good)
        for _ in range(rnd.choice((1, 2, 4, 8))):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.2:
            data = data[: rnd.randrange(len(data))]
        out.append(bytes(data))
    return out


def in_child(action: Callable[[], None]) -> int | None:
    """Run ``action`` in a forked child: its exit status, or ``None`` if a signal killed it."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
        except BaseException:  # noqa: BLE001 - an error is an outcome here, not a crash
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return None if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def gate_open(path: Path) -> Callable[[], None]:
    def action() -> None:
        from exportgate.geo import build_locator

        build_locator(database=path, check_interval=3600, cache_size=0)
    return action


def gate_read(path: Path, addresses: Sequence[str]) -> Callable[[], None]:
    def action() -> None:
        from exportgate.errors import GeoDatabaseError
        from exportgate.geo import build_locator

        try:
            locator = build_locator(database=path, check_interval=3600, cache_size=0)
        except GeoDatabaseError:
            os._exit(2)
        for address in addresses:
            locator.locate(address)  # never raises: a failed lookup is an unknown location, decided closed
    return action


def plain_open(path: Path) -> Callable[[], None]:
    def action() -> None:
        import maxminddb

        maxminddb.open_database(str(path))
    return action


def plain_read(path: Path, addresses: Sequence[str]) -> Callable[[], None]:
    def action() -> None:
        import maxminddb

        try:
            reader = maxminddb.open_database(str(path))
        except Exception:  # noqa: BLE001 - refused at open
            os._exit(2)
        for address in addresses:
            try:
                reader.get(address)
            except Exception:  # noqa: BLE001, S112 - an error, not a crash
                continue
    return action


def outcome(path: Path, read: Callable[[], None], opened: Callable[[], None]) -> str:
    status = in_child(read)
    if status == 2:
        return "refused at open"
    if status is not None:
        return "loaded"
    return "crashed at open" if in_child(opened) is None else "crashed at a lookup"


def addresses_of(networks: Sequence[dict[str, object]]) -> list[str]:
    """One address inside each network (its second), and a few outside all of them."""
    import ipaddress

    inside = [str(ipaddress.ip_network(str(n["network"])).network_address + 1) for n in networks]
    return [*inside, "8.8.4.4", "1.2.3.4", "9.9.9.9", "2001:db8::1", "81.2.69.142"]


def run(args: argparse.Namespace) -> str:
    networks = geodata.load_networks(REPO / "geodata" / "networks.yaml")
    addresses = addresses_of(networks)
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geo-corruption-") as work:
        folder = Path(work)
        for kind in ("Country", "City"):
            good = geodata.build(networks, folder / f"good-{kind}.mmdb", kind=kind, build_epoch=BUILT).read_bytes()
            counts: dict[str, Counter[str]] = {"gate": Counter(), "maxminddb alone": Counter()}
            path = folder / f"{kind}.mmdb"
            for data in corruptions(good, args.files, args.seed):
                path.write_bytes(data)
                counts["gate"][outcome(path, gate_read(path, addresses), gate_open(path))] += 1
                counts["maxminddb alone"][outcome(path, plain_read(path, addresses), plain_open(path))] += 1
            for who, counted in counts.items():
                rows.append((kind, who, counted))
                print(kind, who, dict(counted), flush=True)
    elapsed = time.monotonic() - started
    lines = [
        "## Corrupt geo databases (issue #3: never crash a worker)",
        "",
        (f"`.venv/bin/python bench/geo_corruption.py --files {args.files} --seed {args.seed}` — {machine()}, "
         f"{elapsed:.0f} s"),
        "",
        (f"{args.files:,} corrupted copies of each test database (geodata/networks.yaml built as a Country and a "
         "City database: 1 to 8 random bytes changed, a fifth also cut short), each opened in a child process and "
         f"asked for {len(addresses)} addresses (one in every network, and a few outside): through the gate's "
         "locator, and with `maxminddb.open_database` alone (its C reader)."),
        "",
        "| database | opened by | " + " | ".join(OUTCOMES) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in OUTCOMES) + " |",
    ]
    for kind, who, counted in rows:
        lines.append(f"| {kind} | {who} | " + " | ".join(f"{counted[o]:,}" for o in OUTCOMES) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000, help="corrupted copies of each database")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    markdown = run(args)
    print(markdown)
    if not args.no_write:
        write_section("geo-corruption", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
