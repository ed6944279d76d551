"""A store under load, for the crash and online re-key tests: the store, its writer, and the child.

The store has two regions and three databases, one of them big enough that re-keying it takes a
measurable time. A writer commits numbered rows into every database and logs each id only after
its commit returned (``<database> <id>`` lines, fsynced), so the log is a lower bound of what the
store must hold: a row that is logged and missing was lost.

Run as a script this is the child process a crash test kills. It imports everything first and
prints ``ready``; then it reads one JSON command from stdin (``store``, ``op``, ``log``), opens the
store, starts the writer, prints ``start`` just before the operation and ``done <seconds>`` after
it. A writer error is printed to stderr and makes the exit status 3. The ``read_write`` op instead
reads and writes ``big`` through connections opened before it prints ``start``, until stdin closes,
then prints what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

if __name__ == "__main__":  # the child: import the package from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strongroom import Store, init_store

REGIONS = ("east", "west")
#: database -> home region; "big" is the one whose re-key takes a while.
DATABASES = {"big": "east", "ledger": "east", "accounts": "west"}
SCRATCH = "scratch"  # created and dropped by the create_drop operation
CMEK = "local:///cmek"
OTHER_CMEK = "local:///cmek-next"
BLOB = 4000


def fill_big(store: Store, name: str, megabytes: int) -> None:
    conn = store.connect(name)
    try:
        conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
        with conn:
            conn.execute(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
                "INSERT INTO blobs(b) SELECT randomblob(?) FROM s",
                (megabytes * (1 << 20) // BLOB, BLOB),
            )
    finally:
        conn.close()


def create_committed_table(store: Store, name: str) -> None:
    conn = store.connect(name)
    try:
        conn.execute("CREATE TABLE committed (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    finally:
        conn.close()


def build_store(path: Path, *, big_mb: int, cmek: str | None = None, **init: object) -> Store:
    """A store with :data:`DATABASES`, each holding a ``committed`` table; ``big`` has ``big_mb`` MB of blobs."""
    store = init_store(path, regions=REGIONS, cmek=cmek, **init)  # type: ignore[arg-type]
    for name, region in DATABASES.items():
        store.create_database(name, region=region)
        create_committed_table(store, name)
    fill_big(store, "big", big_mb)
    return store


class RowLog:
    """The committed-rows log: ``<database> <id>`` per line, and ``-<event> <database>`` markers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            os.write(self._fd, f"{line}\n".encode())
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def read(path: Path) -> tuple[dict[str, set[int]], list[str]]:
        """The logged ids per database, and the event markers in order."""
        rows: dict[str, set[int]] = {}
        events = []
        if path.exists():
            for line in path.read_text().splitlines():
                what, name = line.split(" ")
                if what.startswith("-"):
                    events.append(f"{what[1:]} {name}")
                else:
                    rows.setdefault(what, set()).add(int(name))
        return rows, events


def commit_row(conn: object, log: RowLog, name: str) -> int:
    """Insert one row in its own transaction, then log its id."""
    conn.execute("INSERT INTO committed(payload) VALUES (randomblob(200))")  # type: ignore[attr-defined]
    rowid = int(conn.last_insert_rowid())  # type: ignore[attr-defined]
    log.write(f"{name} {rowid}")
    return rowid


class Writer(threading.Thread):
    """Commits rows round-robin into ``names`` through connections opened before it starts."""

    def __init__(self, store: Store, names: Iterable[str], log: RowLog) -> None:
        super().__init__(daemon=True)
        self.conns = {name: store.connect(name) for name in names}
        self.log = log
        self.committed = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for name, conn in self.conns.items():
                    commit_row(conn, self.log, name)
                    self.committed += 1
        except BaseException as exc:  # reported by the caller
            self.errors.append(exc)

    def wait_for(self, rows: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.committed < rows and not self.errors and time.monotonic() < deadline:
            time.sleep(0.001)

    def finish(self) -> list[BaseException]:
        self.stop.set()
        self.join()
        for conn in self.conns.values():
            conn.close()
        return self.errors


def create_drop(store: Store, log: RowLog) -> None:
    """Create a database, commit rows into it, drop it."""
    store.create_database(SCRATCH, region="west")
    log.write(f"-created {SCRATCH}")
    create_committed_table(store, SCRATCH)
    conn = store.connect(SCRATCH)
    try:
        for _ in range(20):
            commit_row(conn, log, SCRATCH)
    finally:
        conn.close()
    log.write(f"-dropping {SCRATCH}")
    store.drop_database(SCRATCH)
    log.write(f"-dropped {SCRATCH}")


def operations(store: Store, log: RowLog) -> dict[str, Callable[[], object]]:
    return {
        "rotate_data_keys": store.rotate_data_keys,
        "rotate_store_key": store.rotate_store_key,
        "enable_cmek": lambda: store.enable_cmek(dict.fromkeys(REGIONS, CMEK)),
        "rotate_cmek_uri": lambda: store.rotate_cmek(dict.fromkeys(REGIONS, OTHER_CMEK)),
        "rotate_cmek_version": lambda: store.rotate_cmek(dict.fromkeys(REGIONS)),
        "revoke_cmek": store.revoke_cmek,
        "create_drop": lambda: create_drop(store, log),
    }


class Child:
    """One run of this script as a child process; spawned ahead, so its imports overlap other work."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _expect(self, word: str) -> str:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith(word):
            self.proc.kill()
            _out, err = self.proc.communicate()
            raise AssertionError(f"child said {line!r} instead of {word!r}; stderr:\n{err}")
        return line

    def start(self, store: Path, op: str, log: Path) -> None:
        """Send the command and wait until the operation is about to begin."""
        self._expect("ready")
        self.proc.stdin.write(json.dumps({"store": str(store), "op": op, "log": str(log)}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        self._expect("start")

    def finish(self) -> float:
        """Let the operation end; returns its duration (s)."""
        seconds = float(self._expect("done").split()[1])
        _out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return seconds

    def kill(self) -> bool:
        """SIGKILL now; True if the operation had not finished."""
        self.proc.send_signal(signal.SIGKILL)
        out, _err = self.proc.communicate(timeout=60)
        return "done" not in out

    def stop(self) -> dict[str, object]:
        """End a ``read_write`` run: close its stdin and return its report."""
        out, err = self.proc.communicate(input="", timeout=60)
        assert self.proc.returncode == 0, err
        return dict(json.loads(out.splitlines()[-1]))


def read_write(store: Store, log: RowLog) -> dict[str, object]:
    """Write rows into ``big`` and count them on another connection until stdin closes."""
    writer, reader = store.connect("big"), store.connect("big")
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("start", flush=True)
    written, counts, errors = [], [], []
    while not stop.is_set():
        try:
            written.append(commit_row(writer, log, "big"))
            counts.append(reader.execute("SELECT count(*) FROM committed").fetchall()[0][0])
        except Exception as exc:
            errors.append(repr(exc))
            break
    return {"written": written, "counts": counts, "errors": errors}


def child() -> int:
    print("ready", flush=True)
    command = json.loads(sys.stdin.readline())
    log = RowLog(Path(command["log"]))
    store = Store.open(command["store"])
    if command["op"] == "read_write":
        print(json.dumps(read_write(store, log)), flush=True)
        return 0
    writer = Writer(store, DATABASES, log)
    writer.start()
    writer.wait_for(len(DATABASES) * 3)
    print("start", flush=True)
    started = time.monotonic()
    operations(store, log)[command["op"]]()
    print(f"done {time.monotonic() - started:.6f}", flush=True)
    errors = writer.finish()
    if command["op"] != "revoke_cmek" and errors:  # a revoked store stops: its writer may fail
        print(f"writer failed: {errors[0]!r}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(child())
