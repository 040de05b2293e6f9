"""Snapshot metadata in sqlite (WAL): crash-safe and inspectable with the sqlite3 shell.

One row per snapshot. A committed snapshot keeps the numeric id it had while active, so its
directory ``snapshots/<id>`` never moves; children point at their parent by id. Every public
operation is one transaction under one lock: sqlite serialises writers anyway, and the lock
makes the read-check-write sequences (does the key exist? does it have children?) atomic.
Reads take no lock: each thread has its own connection, and WAL gives it a consistent view
while a write is under way, so Mounts and Stat never queue behind a Commit's fsync.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lazy2dfs.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from lazy2dfs.snapshotter.snapshot import Info, Kind, Usage

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    key        TEXT    NOT NULL UNIQUE,
    parent_id  INTEGER REFERENCES snapshots(id),
    kind       INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    labels     TEXT    NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    inodes     INTEGER NOT NULL DEFAULT 0,
    -- JSON of the LayerRequest a remote (lazily served) committed snapshot was made from.
    remote     TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
"""

NO_USAGE = Usage()

# containerd refuses a label whose key and value together exceed this many bytes.
MAX_LABEL_BYTES = 4096


@dataclass(frozen=True)
class Record:
    """A row: the snapshot's info plus what only the snapshotter needs (id, parent chain)."""

    id: int
    info: Info
    parents: tuple[Parent, ...]  # nearest parent first
    usage: Usage
    remote: str | None = None


@dataclass(frozen=True)
class Parent:
    id: int
    remote: bool


def validate_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if not key:
            raise InvalidArgumentError("label key must not be empty")
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise InvalidArgumentError(
                f"label {key!r} is too long: key and value exceed {MAX_LABEL_BYTES} bytes"
            )


def _now_ns() -> int:
    return time.time_ns()


class Tx:
    """Operations inside one open transaction; obtained from ``Store.write()``/``read()``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _row(self, key: str) -> sqlite3.Row:
        row = self._conn.execute("SELECT * FROM snapshots WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NotFoundError(f"snapshot {key!r} does not exist")
        return row  # type: ignore[no-any-return]

    def _parent_chain(self, parent_id: int | None) -> tuple[Parent, ...]:
        chain: list[Parent] = []
        while parent_id is not None:
            row = self._conn.execute(
                "SELECT parent_id, remote FROM snapshots WHERE id = ?", (parent_id,)
            ).fetchone()
            if row is None:
                break
            chain.append(Parent(parent_id, row["remote"] is not None))
            parent_id = row["parent_id"]
        return tuple(chain)

    def _record(self, row: sqlite3.Row) -> Record:
        parent = ""
        if row["parent_id"] is not None:
            prow = self._conn.execute(
                "SELECT key FROM snapshots WHERE id = ?", (row["parent_id"],)
            ).fetchone()
            parent = prow["key"]
        info = Info(
            name=row["key"],
            parent=parent,
            kind=Kind(row["kind"]),
            created_ns=row["created_ns"],
            updated_ns=row["updated_ns"],
            labels=json.loads(row["labels"]),
        )
        return Record(
            id=row["id"],
            info=info,
            parents=self._parent_chain(row["parent_id"]),
            usage=Usage(size=row["size"], inodes=row["inodes"]),
            remote=row["remote"],
        )

    def get(self, key: str) -> Record:
        return self._record(self._row(key))

    def find(self, key: str) -> Record | None:
        row = self._conn.execute("SELECT * FROM snapshots WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._record(row)

    def exists(self, key: str) -> bool:
        return (
            self._conn.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone()
            is not None
        )

    def create(
        self,
        kind: Kind,
        key: str,
        parent: str,
        labels: dict[str, str],
        remote: str | None = None,
        usage: Usage = NO_USAGE,
    ) -> Record:
        """A new snapshot; ``remote`` makes a committed one that lives in the FUSE mount."""
        allowed = (Kind.COMMITTED,) if remote is not None else (Kind.ACTIVE, Kind.VIEW)
        if kind not in allowed:
            raise InvalidArgumentError(f"snapshot type {kind.filter_name} cannot be created")
        if not key:
            raise InvalidArgumentError("snapshot key must not be empty")
        validate_labels(labels)
        if self.exists(key):
            raise AlreadyExistsError(f"snapshot {key!r} already exists")
        parent_id: int | None = None
        if parent:
            prow = self._row(parent)
            if prow["kind"] != Kind.COMMITTED:
                raise InvalidArgumentError(f"parent {parent!r} is not a committed snapshot")
            parent_id = prow["id"]
        now = _now_ns()
        self._conn.execute(
            "INSERT INTO snapshots"
            " (key, parent_id, kind, created_ns, updated_ns, labels, size, inodes, remote)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                parent_id,
                int(kind),
                now,
                now,
                json.dumps(labels, sort_keys=True),
                usage.size,
                usage.inodes,
                remote,
            ),
        )
        return self.get(key)

    def commit(self, key: str, name: str, labels: dict[str, str], usage: Usage) -> Record:
        """Turns active ``key`` into committed ``name``; labels are replaced, not inherited."""
        if not name:
            raise InvalidArgumentError("committed snapshot name must not be empty")
        validate_labels(labels)
        row = self._row(key)
        if row["kind"] != Kind.ACTIVE:
            raise FailedPreconditionError(f"snapshot {key!r} is not active")
        if self.exists(name):
            raise AlreadyExistsError(f"snapshot {name!r} already exists")
        now = _now_ns()
        self._conn.execute(
            "UPDATE snapshots SET key = ?, kind = ?, created_ns = ?, updated_ns = ?, labels = ?,"
            " size = ?, inodes = ? WHERE id = ?",
            (
                name,
                int(Kind.COMMITTED),
                now,
                now,
                json.dumps(labels, sort_keys=True),
                usage.size,
                usage.inodes,
                row["id"],
            ),
        )
        return self.get(name)

    def remove(self, key: str) -> Record:
        record = self.get(key)
        child = self._conn.execute(
            "SELECT key FROM snapshots WHERE parent_id = ? LIMIT 1", (record.id,)
        ).fetchone()
        if child:
            raise FailedPreconditionError(
                f"cannot remove snapshot {key!r}: snapshot {child['key']!r} is its child"
            )
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (record.id,))
        return record

    def set_labels(self, key: str, labels: dict[str, str]) -> Record:
        validate_labels(labels)
        row = self._row(key)
        self._conn.execute(
            "UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
            (json.dumps(labels, sort_keys=True), _now_ns(), row["id"]),
        )
        return self.get(key)

    def all(self) -> list[Record]:
        rows = self._conn.execute("SELECT * FROM snapshots ORDER BY id").fetchall()
        return [self._record(row) for row in rows]

    def ids(self) -> set[int]:
        return {row["id"] for row in self._conn.execute("SELECT id FROM snapshots")}

    def remote_records(self) -> list[Record]:
        rows = self._conn.execute("SELECT * FROM snapshots WHERE remote IS NOT NULL ORDER BY id")
        return [self._record(row) for row in rows.fetchall()]

    def count_by_kind(self) -> dict[Kind, int]:
        rows = self._conn.execute("SELECT kind, COUNT(*) AS n FROM snapshots GROUP BY kind")
        return {Kind(row["kind"]): row["n"] for row in rows}


class Store:
    """The metadata database of one daemon root."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._conn = self._connect()
        self._conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed snapshot survives power loss, not only a crash of this process.
        self._conn.execute("PRAGMA synchronous = FULL")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise FailedPreconditionError(
                f"metadata database {path} has schema version {version}; this lazy2dfs"
                f" understands version {SCHEMA_VERSION}: use the matching lazy2dfs release"
            )
        self._conn.executescript(_SCHEMA)
        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # Labels name every tenant's images: root only, whatever the directory's mode.
        for suffix in ("", "-wal", "-shm"):
            database_file = path.with_name(path.name + suffix)
            if database_file.exists():
                os.chmod(database_file, 0o600)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """One write transaction: committed when the block ends, rolled back on an exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A consistent read of several rows, concurrent with writes and other reads."""
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._readers.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        conn.execute("BEGIN")
        try:
            yield Tx(conn)
        finally:
            conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            for conn in [self._conn, *self._reader_conns]:
                conn.close()
