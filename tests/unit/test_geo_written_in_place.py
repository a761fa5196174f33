"""A geo database written in place under a running gate (``cp``, ``curl -o``, ``wget -O`` onto its path).

``maxminddb``'s C reader maps its file into memory, and a mapped file truncated under it kills the process with
SIGBUS at the next lookup. The gate reads a private copy instead (mmdbfile's module docstring): the old data goes on
answering while the file is half-written, and the new data is taken once it is whole. The scenario that would
crash runs in a process of its own, so a regression fails the test instead of killing pytest; the others check that
this process maps no part of the file itself (``/proc/self/maps``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from exportgate import geodata, mmdbfile
from exportgate.errors import GeoDatabaseError
from exportgate.geo import build_locator

NETWORKS = geodata.load_networks(Path(__file__).parents[2] / "geodata" / "networks.yaml")
FRESH = int(time.time()) - 86400
SUDAN_NOW = [{"network": "2.176.0.0/12", "country": "SD"}, {"network": "8.8.8.0/24", "country": "US"}]


def write_in_place(path: Path, data: bytes) -> None:
    """What ``cp new.mmdb path`` does: the same inode, truncated, then written."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def maps() -> list[str]:
    """What this process has mapped into memory, a line each (``/proc/self/maps``)."""
    return Path("/proc/self/maps").read_text(encoding="utf-8").splitlines()


def mapped(path: Path) -> bool:
    return any(line.endswith(" " + str(path)) for line in maps())


def run_alone(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False, capture_output=True,
                          text=True, timeout=60)


def test_a_file_truncated_and_rewritten_in_place_neither_crashes_nor_answers_from_half_a_file(tmp_path: Path) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    new = geodata.build(SUDAN_NOW, tmp_path / "new.mmdb", kind="Country", build_epoch=FRESH + 60)
    done = run_alone(f"""
        from pathlib import Path
        from exportgate.geo import build_locator
        path, new = Path({str(path)!r}), Path({str(new)!r}).read_bytes()
        locator = build_locator(database=path, check_interval=0, cache_size=0)
        print(locator.locate("2.176.0.1").country)
        with open(path, "r+b") as f:
            f.truncate(0)  # every page of the old file gone from under a mapping of it
            print(locator.locate("8.8.8.8").country)  # a network not looked up yet: read from the reader
            f.write(new[: len(new) // 2])
            f.flush()
            print(locator.locate("41.67.0.1").country, locator.describe()["last_reload_error"] is not None)
            f.write(new[len(new) // 2:])
        print(locator.locate("2.176.0.2").country, locator.describe()["last_reload_error"])
    """)
    assert done.returncode == 0, f"exit {done.returncode} (SIGBUS is -7): {done.stderr[-2000:]}"
    assert done.stdout.split("\n") == ["IR", "US", "SD True", "SD None", ""]


def test_the_reader_maps_an_anonymous_copy(tmp_path: Path) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    locator = build_locator(database=path, check_interval=3600, cache_size=0)
    assert locator.locate("8.8.8.8").country == "US"
    assert not mapped(path)
    assert any("/memfd:exportgate-geo" in line for line in maps())


def test_without_anonymous_memory_files_a_temporary_file_is_copied_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    def refused(name: str, flags: int = 0) -> int:
        raise PermissionError(1, "Operation not permitted")  # a syscall filter with SystemCallErrorNumber=EPERM

    monkeypatch.setattr(os, "memfd_create", refused, raising=False)
    locator = build_locator(database=path, check_interval=3600, cache_size=0)
    assert list(temp.iterdir()) == []  # unlinked once the reader has it
    assert not mapped(path)
    assert locator.locate("8.8.8.8").country == "US"


def no_proc(where: str, fd: int) -> None:
    raise OSError(2, "No such file or directory", where)


def reader_refusing_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/self/fd/N is there, but opening it is refused (a security module's policy)."""
    import maxminddb

    real = maxminddb.open_database

    def refusing(where: str, *args: object) -> object:
        if str(where).startswith("/proc/"):
            raise PermissionError(13, "Permission denied", where)
        return real(where, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(maxminddb, "open_database", refusing)


@pytest.mark.parametrize("case", ["no /proc", "/proc/self/fd refused to the reader"])
def test_without_proc_a_temporary_file_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    if case == "no /proc":
        monkeypatch.setattr(mmdbfile, "_check_same_file", no_proc)
    else:
        reader_refusing_proc(monkeypatch)
    opened: list[str] = []
    real = mmdbfile._reader
    monkeypatch.setattr(mmdbfile, "_reader", lambda where, *args: opened.append(where) or real(where, *args))
    locator = build_locator(database=path, check_interval=3600, cache_size=0)
    where = opened[-1]
    assert where != str(path) and not where.startswith("/proc/") and not os.path.exists(where)
    assert not mapped(path)
    assert locator.locate("8.8.8.8").country == "US"


def test_with_no_copy_possible_the_file_itself_is_read_and_ops_are_warned_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    new = geodata.build(SUDAN_NOW, tmp_path / "new.mmdb", kind="Country", build_epoch=FRESH + 60)
    monkeypatch.setattr(mmdbfile, "_check_same_file", no_proc)

    def no_temp(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", no_temp)
    with caplog.at_level(logging.WARNING, logger="exportgate.geo"):
        locator = build_locator(database=path, check_interval=0, cache_size=0)
        assert locator.locate("2.176.0.1").country == "IR"
        assert mapped(path)
        os.replace(new, path)  # renamed over, as geoipupdate does: still fine
        assert locator.locate("2.176.0.2").country == "SD"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "renaming a new file over it" in warnings[0]


def test_a_file_that_changes_while_it_is_copied_is_refused_and_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    locator = build_locator(database=path, check_interval=0, cache_size=0)
    new = geodata.build(SUDAN_NOW, tmp_path / "new.mmdb", kind="Country", build_epoch=FRESH + 60).read_bytes()
    real = mmdbfile._copy

    def copy_while_written(source: object, fd: int) -> None:
        real(source, fd)  # type: ignore[arg-type]
        with open(path, "ab") as f:  # the writer is still at it
            f.write(b"\0")

    write_in_place(path, new)
    monkeypatch.setattr(mmdbfile, "_copy", copy_while_written)
    assert locator.locate("2.176.0.1").country == "IR"  # the old copy answers
    assert "changed while it was read" in str(locator.describe()["last_reload_error"])
    monkeypatch.setattr(mmdbfile, "_copy", real)
    write_in_place(path, new)
    assert locator.locate("2.176.0.2").country == "SD"
    assert locator.describe()["last_reload_error"] is None


def test_a_refused_copy_names_the_file_not_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "Country.mmdb"
    path.write_bytes(b"\xab\xcd\xefMaxMind.com but cut short")
    with pytest.raises(GeoDatabaseError) as caught:
        build_locator(database=path)
    assert str(path) in str(caught.value)
    assert "/proc/self/fd" not in str(caught.value) and "exportgate-geo-" not in str(caught.value)


@pytest.mark.parametrize("full", ["memory and temporary directory", "temporary directory, no memory files"])
def test_no_room_for_a_copy_reads_the_file_itself_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, full: str
) -> None:
    """A full memory cgroup or temporary directory must not stop the gate from starting or reloading. The copy is
    written to /dev/full: what is left in the write buffer fails as the copy is closed."""
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    if full == "memory and temporary directory":
        monkeypatch.setattr(os, "memfd_create", lambda name, flags=0: os.open("/dev/full", os.O_WRONLY))
    else:
        monkeypatch.setattr(mmdbfile, "_PRIVATE_COPIES", (mmdbfile._temporary_copy,))
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: (os.open("/dev/full", os.O_WRONLY), "/dev/full"))
    monkeypatch.setattr(os, "unlink", lambda where: None)
    with caplog.at_level(logging.WARNING, logger="exportgate.geo"):
        locator = build_locator(database=path, check_interval=0, cache_size=0)
        assert locator.locate("8.8.8.8").country == "US"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in warning and "No space left on device" in warning


class _FailingReads(io.RawIOBase):
    """The file as read through a disk that fails: every read is an I/O error."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def readinto(self, buffer: Any) -> int:
        raise OSError(5, "Input/output error")


def test_a_file_that_cannot_be_read_is_refused_not_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error reading the file is no reason to map it instead of a copy: it is refused (the old copy goes on
    answering), never read through a mapping that a failing page would turn into SIGBUS."""
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    real_open = open

    def failing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "rb":
            return io.BufferedReader(_FailingReads(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(mmdbfile, "open", failing_open, raising=False)
    with pytest.raises(GeoDatabaseError, match="cannot read: Input/output error"):
        build_locator(database=path)
    assert not mapped(path)


def test_a_copy_that_fails_once_opened_leaves_no_reader_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    copies: list[Path] = []

    @contextlib.contextmanager
    def failing_on_the_way_out(source: Any) -> Any:
        copy = tmp_path / f"copy-{len(copies)}.mmdb"
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
        yield str(copy)
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(mmdbfile, "_PRIVATE_COPIES", (failing_on_the_way_out, mmdbfile._temporary_copy))
    readers: list[Any] = []
    real = mmdbfile._reader
    monkeypatch.setattr(mmdbfile, "_reader", lambda *args: readers.append(real(*args)) or readers[-1])
    locator = build_locator(database=path, check_interval=3600, cache_size=0)
    assert locator.locate("8.8.8.8").country == "US"
    c_readers = [r for r in readers if type(r).__module__ == "maxminddb.extension"]
    assert len(c_readers) == 2
    assert c_readers[0].closed and not c_readers[1].closed  # the first closed, not left open beside the one in use
    assert not mapped(copies[0])


def test_a_file_replaced_while_it_is_read_without_a_copy_is_refused_and_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    new = geodata.build(SUDAN_NOW, tmp_path / "new.mmdb", kind="Country", build_epoch=FRESH + 60)
    monkeypatch.setattr(mmdbfile, "_PRIVATE_COPIES", ())
    locator = build_locator(database=path, check_interval=0, cache_size=0)
    real = mmdbfile._checked_in_python

    def then_replaced(where: str, p: str) -> None:
        real(where, p)
        os.replace(new, path)  # between the check and the reader that will answer

    monkeypatch.setattr(mmdbfile, "_checked_in_python", then_replaced)
    os.utime(path, ns=(0, 0))  # noticed as a change
    assert locator.locate("2.176.0.1").country == "IR"  # the old reader answers
    assert "changed while it was read" in str(locator.describe()["last_reload_error"])
    monkeypatch.setattr(mmdbfile, "_checked_in_python", real)
    assert locator.locate("2.176.0.2").country == "SD"  # the file now in place, checked and read


def test_a_database_with_metadata_the_c_reader_crashes_on_is_refused(tmp_path: Path) -> None:
    """An extra key in the metadata: maxminddb's C reader dies of SIGSEGV reading it (in a process of its own)."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet  # type: ignore[import-untyped]

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Country", languages=["en"],
                        description={"en": "test"}, int_type="u32")
    plain = writer._build_meta
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(writer, "_build_meta", lambda: {**plain(), "x_vendor": "acme"})
    writer.insert_network(IPSet(["8.8.8.0/24"]), {"country": {"iso_code": "US"}})
    path = tmp_path / "Country.mmdb"
    writer.to_db_file(str(path))
    done = run_alone(f"""
        from exportgate.errors import GeoDatabaseError
        from exportgate.geo import build_locator
        try:
            build_locator(database={str(path)!r})
        except GeoDatabaseError as exc:
            print(exc.reason)
    """)
    assert done.returncode == 0, f"exit {done.returncode} (SIGSEGV is -11): {done.stderr[-1000:]}"
    assert "not a valid MaxMind DB file" in done.stdout
