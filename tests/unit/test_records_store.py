"""Record stores: URLs, the SQLite schema, append-only writes, queries, failures at open."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

from exportgate.errors import ConfigError, RecordStoreError
from exportgate.records import (
    Chain,
    CorruptRecordError,
    Record,
    SQLiteStore,
    Store,
    StoreOpenError,
    open_store,
)

AT = "2026-11-29T03:04:05.000006Z"


def sealed(chain_id: str, n: int, kind: str = "decision", start: int = 1) -> list[Record]:
    chain = Chain(chain_id)
    records = [
        chain.seal(kind, f"{chain_id}/{i}", AT, {"i": i, "city": "Zürich"})
        for i in range(1, start + n)
    ]
    return records[start - 1 :]


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "r.db") if request.param == "file" else None)
    yield s
    s.close()


# -- URLs ------------------------------------------------------------------------------------


def test_open_store_absolute_relative_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absolute = open_store(f"sqlite://{tmp_path}/abs/records.db")
    assert isinstance(absolute, SQLiteStore) and absolute.path == str(tmp_path / "abs/records.db")
    absolute.close()
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:rel/records.db?synchronous=normal&busy_timeout_ms=250&commit_delay_ms=2.5")
    assert isinstance(relative, SQLiteStore) and relative.path == str(tmp_path / "rel/records.db")
    assert relative.commit_delay == 0.0025
    relative.close()
    assert absolute.commit_delay == 0.00025  # the default
    assert open_store("sqlite::memory:?commit_delay_ms=0").commit_delay == 0.0
    memory = open_store("sqlite::memory:")
    assert isinstance(memory, SQLiteStore) and memory.path is None
    assert isinstance(memory, Store)
    memory.close()
    spaced = open_store(f"sqlite://{tmp_path}/with%20space.db")
    assert isinstance(spaced, SQLiteStore) and spaced.path == str(tmp_path / "with space.db")
    spaced.close()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("records.db", "no scheme", id="bare path"),
        pytest.param("/var/lib/exportgate/records.db", "no scheme", id="absolute path"),
        pytest.param("postgresql://db.example/records", "scheme 'postgresql'", id="not yet"),
        pytest.param("mysql://h/db", "supported: sqlite:", id="unknown scheme"),
        pytest.param("sqlite://", "no host", id="two slashes only"),
        pytest.param("sqlite://:memory:", "no host", id="memory with slashes"),
        pytest.param("sqlite://host/records.db", "no host", id="host"),
        pytest.param("sqlite:", "no database path", id="no path"),
        pytest.param("sqlite:///", "no database path", id="root"),
        pytest.param("sqlite:r.db#x", "'#'", id="fragment"),
        pytest.param("sqlite:r.db?synchronous=off", "synchronous='off'", id="synchronous off"),
        pytest.param(
            "sqlite:r.db?synchronous=fast", "synchronous='fast'", id="synchronous unknown"
        ),
        pytest.param("sqlite:r.db?busy_timeout_ms=-1", "busy_timeout_ms", id="negative timeout"),
        pytest.param("sqlite:r.db?busy_timeout_ms=1e3", "busy_timeout_ms", id="float timeout"),
        pytest.param("sqlite:r.db?busy_timeout_ms=%C2%B2", "busy_timeout_ms", id="superscript digit timeout"),
        pytest.param("sqlite:r.db?journal=delete", "unknown option", id="unknown option"),
        pytest.param("sqlite:r.db?commit_delay_ms=-1", "commit_delay_ms", id="negative delay"),
        pytest.param("sqlite:r.db?commit_delay_ms=1001", "commit_delay_ms", id="delay over a second"),
        pytest.param("sqlite:r.db?commit_delay_ms=nan", "commit_delay_ms", id="delay NaN"),
        pytest.param("sqlite:r.db?commit_delay_ms=", "commit_delay_ms", id="delay empty"),
        pytest.param("sqlite:r.db?commit_delay_ms=0x10", "commit_delay_ms", id="delay hex"),
        pytest.param("sqlite:r.db?synchronous=full&synchronous=normal", "twice", id="option twice"),
        pytest.param("sqlite:r.db?synchronous", "malformed query", id="option without value"),
        pytest.param("sqlite:r%00.db", "NUL", id="NUL"),
        pytest.param("http://[::1", "malformed", id="malformed"),
    ],
)
def test_open_store_refuses_bad_urls(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url, file="gate.yaml", line=12)
    assert says in str(info.value)
    assert str(info.value).startswith("gate.yaml:12: ")
    if url:
        assert repr(url) in str(info.value)


# -- opening fails early and plainly --------------------------------------------------------


def _directory_in_place_of_the_file(tmp_path: Path) -> str:
    (tmp_path / "records.db").mkdir()
    return str(tmp_path / "records.db")


def _regular_file_in_place_of_the_directory(tmp_path: Path) -> str:
    (tmp_path / "store").write_text("not a directory")
    return str(tmp_path / "store" / "records.db")


def _not_a_database(tmp_path: Path) -> str:
    (tmp_path / "records.db").write_bytes(b"this is not an SQLite database, just text" * 100)
    return str(tmp_path / "records.db")


def _newer_schema(tmp_path: Path) -> str:
    path = str(tmp_path / "records.db")
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    return path


def _unwritable_directory(tmp_path: Path) -> str:
    # Tests run as root, so chmod does not stop us; procfs refuses new files even to root.
    return "/proc/exportgate-test-store/records.db"


def _unwritable_file_place(tmp_path: Path) -> str:
    return "/proc/exportgate-test-records.db"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        pytest.param(_directory_in_place_of_the_file, "is a directory", id="path is a directory"),
        pytest.param(
            _regular_file_in_place_of_the_directory,
            "cannot create directory",
            id="parent is a regular file",
        ),
        pytest.param(_not_a_database, "not a database", id="not a database"),
        pytest.param(_newer_schema, "schema version 99", id="newer schema"),
        pytest.param(_unwritable_directory, "cannot create directory", id="unwritable directory"),
        pytest.param(_unwritable_file_place, "unable to open", id="unwritable place"),
    ],
)
def test_open_fails_at_open_time_with_a_plain_message(make, says: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(StoreOpenError) as info:
        SQLiteStore(path)
    assert says in str(info.value)
    assert path in str(info.value)
    assert isinstance(info.value, RecordStoreError)


def test_open_fails_on_a_read_only_database(tmp_path: Path) -> None:
    # Tests run as root, which ignores file modes; an immutable file (chattr +i) is refused even
    # to root. Without the write probe this store would open fine and fail at the first download.
    path = tmp_path / "records.db"
    with SQLiteStore(str(path)) as s:
        s.append(sealed("c:1", 1))
    chattr = shutil.which("chattr") or "/usr/bin/chattr"
    made = os.path.exists(chattr) and not subprocess.run(
        [chattr, "+i", str(path)], capture_output=True, check=False
    ).returncode
    require(bool(made), "chattr +i (an immutable file)", "e2fsprogs, run as root, on ext2/3/4")
    try:
        with pytest.raises(StoreOpenError, match="readonly") as info:
            SQLiteStore(str(path))
        assert str(path) in str(info.value)
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_file_store_uses_wal_and_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "records.db"
    with SQLiteStore(str(path), synchronous="FULL") as s:
        s.append(sealed("c:1", 1))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]


# -- writing and reading ---------------------------------------------------------------------


def test_append_and_query(store: SQLiteStore) -> None:
    b = sealed("b:1", 3)
    a = sealed("a:1", 2, kind="authorization")
    store.append(b)
    store.append(a)
    everything = list(store.iter_records())
    assert everything == a + b  # (chain, seq) order, not insertion order
    assert [r.body_json for r in everything] == [r.body_json for r in a + b]
    assert list(store.iter_records(kind="authorization")) == a
    assert list(store.iter_records(chain="b:1")) == b
    assert list(store.iter_records(chain="b:1", after_seq=1)) == b[1:]
    assert list(store.iter_records(kind="revocation")) == []
    assert store.get("b:1/2") == b[1]
    assert store.get("nope") is None
    assert store.last("b:1") == b[-1]
    assert store.last("nope") is None
    assert store.chains() == ["a:1", "b:1"]
    assert (store.count(), store.count("decision"), store.count("authorization")) == (5, 3, 2)
    store.append([])  # nothing to do, not an error


def test_body_is_stored_as_the_hashed_canonical_text(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    with SQLiteStore(path) as s:
        s.append(sealed("c:1", 1))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT body FROM records").fetchone()[0] == '{"city":"Zürich","i":1}'


@pytest.mark.parametrize(
    "n", [pytest.param(5, id="one statement"), pytest.param(300, id="several statements")]
)
def test_append_is_all_or_nothing(store: SQLiteStore, n: int) -> None:
    records = sealed("c:1", n)
    store.append(records[:1])
    with pytest.raises(RecordStoreError, match=f"commit of {n} record\\(s\\) failed"):
        store.append(records)  # seq 1 is already there: the whole batch is refused
    assert store.count() == 1
    store.append(records[1:])
    assert store.count() == n



@pytest.mark.parametrize("how", ["removed", "replaced", "wal removed", "wal replaced", "shm removed", "shm replaced"])
def test_a_database_file_removed_or_replaced_under_the_store_commits_nothing_more(tmp_path: Path, how: str) -> None:
    """Someone deletes records.db (or puts another file in its place), or only its WAL (a clean-up of "-wal
    files"), while the gate runs: SQLite would go on committing into the unlinked file, which nobody can read and
    which vanishes when the gate stops (the WAL: with a crash). Every commit and readiness probe fails instead (the
    download is refused), saying what happened."""
    path = tmp_path / "records.db"
    with SQLiteStore(str(path)) as s:
        records = sealed("c:1", 3)
        s.append(records[:1])
        # The -shm too: the gate would go on with the unlinked wal-index while the next process to open the store
        # (exportgate authorize, audit verify) built another, and the two writers' WAL corrupted the database.
        pattern = {"wal": "records.db-wal", "shm": "records.db-shm"}.get(how[:3], "records.db*")
        for sidecar in tmp_path.glob(pattern):
            sidecar.unlink()
        if how in ("wal replaced", "shm replaced"):
            (tmp_path / pattern).write_bytes(b"")
        if how == "replaced":
            with SQLiteStore(str(tmp_path / "other.db")):
                pass
            os.rename(tmp_path / "other.db", path)
        with pytest.raises(RecordStoreError, match="removed or replaced while the gate had it open"):
            s.append(records[1:2])
        with pytest.raises(RecordStoreError, match="removed or replaced"):
            s.check_writable()


# Run in a process of its own: a file size limit (RLIMIT_FSIZE) stands in for a full disk, and applies to the whole
# process. Writes past it fail with EFBIG (SQLite: "disk I/O error"), as writes to a full disk fail with ENOSPC.
_FULL_DISK = """
import os, resource, signal, sys
from exportgate.errors import RecordStoreError
from exportgate.records import Chain, SQLiteStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = sys.argv[1]
chain = Chain("c")
body = {"note": "x" * 1200}
store = SQLiteStore(path)
store.append([chain.seal("decision", "d-0", "2026-11-29T03:04:05.000006Z", body)])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
room = max(os.path.getsize(path), os.path.getsize(path + "-wal")) + 64 * 1024
resource.setrlimit(resource.RLIMIT_FSIZE, (room, hard))
failed = None
for i in range(1, 2000):
    try:
        store.append([chain.seal("decision", f"d-{i}", "2026-11-29T03:04:05.000006Z", body)])
    except RecordStoreError as exc:
        last = store.last("c")
        chain.rewind(last.seq + 1, last.hash)
        failed = str(exc)
        break
print("commit failed:", failed)
try:
    store.check_writable()
    print("probe: writable")
except RecordStoreError as exc:
    print("probe:", exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
store.check_writable()
store.append([chain.seal("decision", "d-after", "2026-11-29T03:04:05.000006Z", body)])
print("after:", store.count())
store.close()
"""


def test_the_readiness_probe_fails_while_the_disk_is_full(tmp_path: Path) -> None:
    """Commits fail on a full disk; the readiness probe (asked while the recorder is unhealthy) must fail as well,
    or a load balancer keeps sending downloads that are all refused. A probe that rolls back writes nothing and
    passes; this one commits a row of its own. Once there is room again, it passes and records commit."""
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "records.db")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("commit failed: ") and "record(s) failed" in lines[0], done.stdout
    assert lines[1].startswith("probe: ") and "not writable" in lines[1], done.stdout
    assert lines[2].startswith("after: "), done.stdout


def test_the_readiness_probe_keeps_no_record(tmp_path: Path) -> None:
    with SQLiteStore(str(tmp_path / "r.db")) as s:
        s.append(sealed("c:1", 1))
        s.check_writable()
        s.check_writable()
        assert s.count() == 1
        assert [r.kind for r in s.iter_records()] == ["decision"]


def test_the_wal_of_a_database_reached_through_a_symbolic_link_is_watched_too(tmp_path: Path) -> None:
    """SQLite keeps the WAL beside the file the link points to, not beside the link."""
    (tmp_path / "disk").mkdir()
    link = tmp_path / "records.db"
    link.symlink_to(tmp_path / "disk" / "records.db")
    with SQLiteStore(str(link)) as s:
        records = sealed("c:1", 2)
        s.append(records[:1])
        (tmp_path / "disk" / "records.db-wal").unlink()
        with pytest.raises(RecordStoreError, match="removed or replaced while the gate had it open"):
            s.append(records[1:])


def test_records_cannot_be_updated_or_deleted_through_sqlite(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    with SQLiteStore(path) as s:
        s.append(sealed("c:1", 2))
    with sqlite3.connect(path) as conn:
        for statement in ("UPDATE records SET body = '{}'", "DELETE FROM records"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    records = sealed("c:1", 3)
    with SQLiteStore(path) as s:
        s.append(records)
    with SQLiteStore(path) as s:
        assert list(s.iter_records()) == records


def test_a_closed_store_refuses_everything(store: SQLiteStore) -> None:
    store.close()
    store.close()  # twice is fine
    with pytest.raises(RecordStoreError, match="closed"):
        store.append(sealed("c:1", 1))
    with pytest.raises(RecordStoreError, match="closed"):
        store.count()
    with pytest.raises(RecordStoreError, match="closed"):
        list(store.iter_records())


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        pytest.param("body", "{not json", "Expecting", id="body not JSON"),
        pytest.param("body", "[1, 2]", "not an object", id="body not an object"),
        pytest.param("body", b'{"i": 1}', "bytes", id="body as blob"),
        pytest.param("seq", "two", "wrong type", id="seq as text"),
    ],
)
def test_unreadable_rows_raise_corrupt_record(
    tmp_path: Path, column: str, value: object, reason: str
) -> None:
    path = str(tmp_path / "r.db")
    with SQLiteStore(path) as s:
        s.append(sealed("c:1", 3))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute(f"UPDATE records SET {column} = ? WHERE seq = 2", (value,))
    with SQLiteStore(path) as s:
        with pytest.raises(CorruptRecordError, match=reason) as info:
            list(s.iter_records())
        assert info.value.chain == "c:1" and info.value.id == "c:1/2"


def test_readers_run_while_the_writer_commits(tmp_path: Path) -> None:
    with SQLiteStore(str(tmp_path / "r.db")) as s:
        records = sealed("c:1", 400)
        s.append(records[:200])
        seen: list[int] = []
        iterator = s.iter_records()
        seen.append(next(iterator).seq)  # a reader is now mid-iteration on its own connection
        writer = threading.Thread(target=s.append, args=(records[200:],))
        writer.start()
        writer.join(timeout=10)
        assert not writer.is_alive()
        seen.extend(r.seq for r in iterator)
        assert seen == list(range(1, 201))  # the reader's snapshot predates the second commit
        assert s.count() == 400


# -- several writing processes -----------------------------------------------------------------------------


def test_writers_of_one_file_take_turns_through_the_lock_file(tmp_path: Path) -> None:
    import fcntl
    import time

    path = tmp_path / "r.db"
    store = SQLiteStore(str(path), busy_timeout_ms=2000)
    other = os.open(f"{path}.lock", os.O_RDWR)  # another process's writer, committing
    fcntl.flock(other, fcntl.LOCK_EX)
    done = threading.Event()
    records = sealed("gate-a", 3)

    def commit() -> None:
        store.append(records)
        done.set()

    writer = threading.Thread(target=commit)
    writer.start()
    time.sleep(0.05)
    assert not done.is_set()  # waits for its turn
    fcntl.flock(other, fcntl.LOCK_UN)
    assert done.wait(2)  # and goes as soon as the other is done
    writer.join()
    assert store.last("gate-a") == records[-1]
    os.close(other)
    store.close()


def test_a_writer_that_never_ends_its_turn_fails_the_commit_in_bounded_time(tmp_path: Path) -> None:
    import fcntl
    import time

    path = tmp_path / "r.db"
    store = SQLiteStore(str(path), busy_timeout_ms=100)
    other = os.open(f"{path}.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    started = time.monotonic()
    with pytest.raises(RecordStoreError, match="commit of 3 record\\(s\\) failed: another writer held"):
        store.append(sealed("gate-a", 3))
    assert time.monotonic() - started < 2
    fcntl.flock(other, fcntl.LOCK_UN)
    store.append(sealed("gate-a", 3))  # the turn came back: commits again
    assert store.count() == 3
    os.close(other)
    store.close()


def test_two_stores_on_one_file_interleave_their_commits(tmp_path: Path) -> None:
    a = SQLiteStore(str(tmp_path / "r.db"))
    b = SQLiteStore(str(tmp_path / "r.db"))
    chains = {"gate-a": a, "gate-b": b}
    failures: list[BaseException] = []

    def write(chain_id: str) -> None:
        chain = Chain(chain_id)
        try:
            for i in range(50):
                chains[chain_id].append([chain.seal("decision", f"{chain_id}/{i}", AT, {"i": i})])
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(c,)) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert a.count() == 100
    a.close()
    b.close()


def test_without_a_usable_lock_file_the_store_still_works(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "r.db.lock").mkdir()  # something that cannot be opened as the lock file
    store = SQLiteStore(str(tmp_path / "r.db"))
    assert "lock file" in caplog.text
    store.append(sealed("gate-a", 2))
    assert store.count() == 2
    store.close()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give files away")
def test_a_lock_file_made_by_root_belongs_to_the_database_owner(tmp_path: Path) -> None:
    SQLiteStore(str(tmp_path / "r.db")).close()
    os.chown(tmp_path / "r.db", 65534, 65534)
    os.unlink(tmp_path / "r.db.lock")
    SQLiteStore(str(tmp_path / "r.db")).close()  # root again, e.g. `exportgate audit verify`
    st = os.stat(tmp_path / "r.db.lock")
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_a_commit_a_trigger_skipped_rows_of_is_no_commit(tmp_path: Path) -> None:
    """A trigger put in the file by someone else can drop rows silently (RAISE(IGNORE)); append used to return as if
    they were stored, and the download was served without a record."""
    store = SQLiteStore(str(tmp_path / "records.db"))
    try:
        db = sqlite3.connect(tmp_path / "records.db")
        db.execute("CREATE TRIGGER skip BEFORE INSERT ON records WHEN NEW.body LIKE '%allow%' "
                   "BEGIN SELECT RAISE(IGNORE); END")
        db.commit()
        db.close()
        chain = Chain("t:trigger")
        few = [chain.seal("decision", f"d-{i}", AT, {"enforced": "allow" if i % 2 else "block"}) for i in range(4)]
        with pytest.raises(RecordStoreError, match="only 2 of 4 rows were stored"):
            store.append(few)
        # Past one statement: a transaction of its own, rolled back whole.
        many = [chain.seal("decision", f"e-{i}", AT, {"enforced": "allow" if i else "block"}) for i in range(300)]
        with pytest.raises(RecordStoreError, match="only 1 of 300 rows were stored"):
            store.append(many)
        assert [r.id for r in store.iter_records() if r.id.startswith("e-")] == []
    finally:
        store.close()
