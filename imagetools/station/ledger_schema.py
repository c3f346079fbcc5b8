"""The ledger's schema, one step per version, written once for both backends."""

from __future__ import annotations


def migrations(*, identity: str, bigint: str, collate: str = "") -> list[tuple[str, ...]]:
    """The schema's steps, one per version (step n takes a ledger from version n to n + 1), in a
    backend's words: its identity column, its 64-bit integer, the collation that orders unit
    names by code point (PostgreSQL's "C"; SQLite's default already does)."""
    return [
        (
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "INSERT INTO meta (key, value) VALUES ('schema_version', '1')",
            f"""CREATE TABLE attempts (
    id {identity},
    unit TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    identity TEXT,
    base_sha256 TEXT NOT NULL,
    target TEXT NOT NULL,
    serial TEXT,
    station TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start {bigint} NOT NULL,
    pinned INTEGER NOT NULL CHECK (pinned IN (0, 1)),
    started TEXT NOT NULL,
    ended TEXT,
    state TEXT NOT NULL CHECK (state IN ('writing', 'passed', 'failed', 'interrupted', 'refused')),
    error TEXT,
    bytes_written {bigint} NOT NULL DEFAULT 0,
    zeroing TEXT,
    checks TEXT,
    times TEXT,
    CHECK ((state = 'writing') = (ended IS NULL))
)""",
            "CREATE INDEX attempts_by_fingerprint ON attempts (fingerprint)",
            "CREATE INDEX attempts_writing ON attempts (host) WHERE state = 'writing'",
        ),
        (
            f"""CREATE TABLE units (
    name TEXT{collate} PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    identity TEXT,
    base_sha256 TEXT NOT NULL,
    registered TEXT NOT NULL,
    taken INTEGER NOT NULL DEFAULT 0 CHECK (taken IN (0, 1))
)""",
            "CREATE INDEX units_free ON units (base_sha256, name) WHERE taken = 0",
            "ALTER TABLE attempts ADD COLUMN slot TEXT",
            "ALTER TABLE attempts ADD COLUMN token TEXT",
            "CREATE UNIQUE INDEX attempts_by_token ON attempts (token)",
            "CREATE INDEX attempts_passed ON attempts (ended) WHERE state = 'passed'",
        ),
    ]
