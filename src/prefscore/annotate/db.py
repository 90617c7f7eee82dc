"""The annotation store: SQLite in WAL mode, one connection per call, writes in ``BEGIN IMMEDIATE``
transactions (so concurrent annotators are serialised by SQLite and nothing is lost on restart).

Tables: ``items`` (candidate images, served only by their random ``public_id``, which says nothing about
the registration order or the generator), ``pairs`` (two candidates of one prompt),
``annotators`` (name + SHA-256 of the token), ``assignments`` (a pair shown to an annotator, with
which side is left; at most one pending per annotator) and ``judgements`` (the answers; an undo
marks a judgement undone instead of deleting it).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .inputs import AnnotationInputError, Candidate, MetricColumn
from .scheduling import (
    Candidates,
    SchedulerConfig,
    choose,
    metric_disagreement,
    pick_repeat,
    rng_for,
    wants_repeat,
)
from .stats import BTFit, fit_bradley_terry

SCHEMA_VERSION = "1"
NAME_RE = re.compile(r"^[\w][\w .@+-]{0,63}$")
MIN_TOKEN_LENGTH = 16
CHOICES = ("left", "right", "tie", "skip")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY,
    prompt_key TEXT NOT NULL,
    prompt TEXT NOT NULL,
    generator TEXT,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    public_id TEXT,
    UNIQUE(prompt_key, path));
CREATE TABLE IF NOT EXISTS metrics(name TEXT PRIMARY KEY, higher_is_better INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pairs(
    id INTEGER PRIMARY KEY,
    item_a INTEGER NOT NULL REFERENCES items(id),
    item_b INTEGER NOT NULL REFERENCES items(id),
    UNIQUE(item_a, item_b),
    CHECK(item_a < item_b));
CREATE TABLE IF NOT EXISTS annotators(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    active INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments(
    id INTEGER PRIMARY KEY,
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    left_is_a INTEGER NOT NULL CHECK(left_is_a IN (0, 1)),
    is_repeat INTEGER NOT NULL DEFAULT 0 CHECK(is_repeat IN (0, 1)),
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK(status IN ('pending', 'answered', 'cancelled')));
CREATE UNIQUE INDEX IF NOT EXISTS one_pending_per_annotator ON assignments(annotator_id) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS judgements(
    id INTEGER PRIMARY KEY,
    assignment_id INTEGER NOT NULL REFERENCES assignments(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    label TEXT NOT NULL CHECK(label IN ('a', 'b', 'tie', 'skip')),
    left_is_a INTEGER NOT NULL,
    is_repeat INTEGER NOT NULL,
    shown_at REAL NOT NULL,
    created_at REAL NOT NULL,
    undone_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_answer ON judgements(assignment_id) WHERE undone_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS one_first_judgement ON judgements(annotator_id, pair_id)
    WHERE undone_at IS NULL AND is_repeat = 0;
CREATE UNIQUE INDEX IF NOT EXISTS one_repeat_judgement ON judgements(annotator_id, pair_id)
    WHERE undone_at IS NULL AND is_repeat = 1;
CREATE INDEX IF NOT EXISTS judgements_by_pair ON judgements(pair_id);
"""

PUBLIC_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def new_public_id() -> str:
    """An unguessable image id for URLs (96 random bits)."""
    return secrets.token_urlsafe(12)


class StoreError(Exception):
    """A request the store refuses; ``status`` is the matching HTTP status code."""

    status = 400


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _label(choice: str, left_is_a: bool) -> str:
    if choice == "left":
        return "a" if left_is_a else "b"
    if choice == "right":
        return "b" if left_is_a else "a"
    return choice


@dataclass
class _Static:
    """Pairs and their per-pair constants (they only change when candidates are registered)."""

    key: tuple
    pair_ids: np.ndarray
    item_a: np.ndarray
    item_b: np.ndarray
    gen_a: np.ndarray
    gen_b: np.ndarray
    disagreement: np.ndarray
    generators: list[str]
    index: dict[int, int]


class Store:
    """All reads and writes of one annotation database (thread-safe: one SQLite connection per call)."""

    def __init__(self, path: str | Path, scheduler: SchedulerConfig | None = None, timeout_s: float = 30.0):
        self.path = Path(path)
        self.scheduler = scheduler or SchedulerConfig()
        self.timeout_s = timeout_s
        self._static: _Static | None = None
        self._static_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            found = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if found is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif found[0] != SCHEMA_VERSION:
                raise AnnotationInputError(f"{self.path}: annotation database schema {found[0]}, this prefscore reads {SCHEMA_VERSION}")
            # databases made before images had random public ids get them now
            if "public_id" not in {r[1] for r in conn.execute("PRAGMA table_info(items)")}:
                conn.execute("ALTER TABLE items ADD COLUMN public_id TEXT")
            for (item_id,) in conn.execute("SELECT id FROM items WHERE public_id IS NULL").fetchall():
                conn.execute("UPDATE items SET public_id=? WHERE id=?", (new_public_id(), item_id))
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS items_public_id ON items(public_id)")

    # -- connections -------------------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside ``BEGIN IMMEDIATE`` (the write lock is taken up front), committed on success."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one read transaction (a consistent snapshot)."""
        with self.connect() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    # -- candidates --------------------------------------------------------------------------------
    def register(self, candidates: Sequence[Candidate], metric_columns: Sequence[MetricColumn] = ()) -> tuple[int, int]:
        """Add candidates (idempotent: a known prompt/image keeps its id and its answers; its generator
        and metric scores are updated) and pair every two candidates of the same prompt.
        Returns ``(new items, new pairs)``."""
        with self.write() as conn:
            items_before = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            pairs_before = conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            for m in metric_columns:
                conn.execute("INSERT INTO metrics VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET higher_is_better=excluded.higher_is_better",
                             (m.name, int(m.higher_is_better)))
            groups: dict[str, list[int]] = {}
            for c in candidates:
                conn.execute(
                    "INSERT INTO items(prompt_key, prompt, generator, path, metrics, public_id) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(prompt_key, path) DO UPDATE SET prompt=excluded.prompt, generator=excluded.generator, metrics=excluded.metrics",
                    (c.prompt_key, c.prompt, c.generator, c.path, json.dumps(c.metrics, sort_keys=True), new_public_id()),
                )
                row = conn.execute("SELECT id FROM items WHERE prompt_key=? AND path=?", (c.prompt_key, c.path)).fetchone()
                groups.setdefault(c.prompt_key, []).append(row[0])
            for key in groups:  # pair with everything of that prompt, including items registered earlier
                ids = sorted(r[0] for r in conn.execute("SELECT id FROM items WHERE prompt_key=?", (key,)))
                conn.executemany("INSERT OR IGNORE INTO pairs(item_a, item_b) VALUES (?, ?)", combinations(ids, 2))
            new_items = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] - items_before
            new_pairs = conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] - pairs_before
        with self._static_lock:
            self._static = None
        return new_items, new_pairs

    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
            return {
                "items": q("SELECT COUNT(*) FROM items"),
                "pairs": q("SELECT COUNT(*) FROM pairs"),
                "prompts": q("SELECT COUNT(DISTINCT prompt_key) FROM items"),
                "annotators": q("SELECT COUNT(*) FROM annotators WHERE active=1"),
                "judgements": q("SELECT COUNT(*) FROM judgements WHERE undone_at IS NULL"),
            }

    def image_path(self, public_id: str) -> str | None:
        """The file of a registered item by its public id (``None`` for an unknown or malformed id): the
        only way images are served."""
        if not isinstance(public_id, str) or not PUBLIC_ID_RE.match(public_id):
            return None
        with self.connect() as conn:
            row = conn.execute("SELECT path FROM items WHERE public_id=?", (public_id,)).fetchone()
        return row[0] if row else None

    # -- the leaderboard's viewer token ------------------------------------------------------------
    def leaderboard_token(self, reset: bool = False) -> str:
        """The token that opens the leaderboard (created on first use; ``reset`` replaces it, so old
        links stop working). Annotator tokens do not open it: annotators stay blind to the generators."""
        with self.write() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='leaderboard_token'").fetchone()
            if row is not None and not reset:
                return row[0]
            token = secrets.token_urlsafe(24)
            conn.execute("INSERT INTO meta VALUES ('leaderboard_token', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         (token,))
            return token

    def check_leaderboard_token(self, token: str | None) -> bool:
        if not token:
            return False
        with self.connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='leaderboard_token'").fetchone()
        return row is not None and secrets.compare_digest(row[0].encode(), token.encode())

    # -- annotators --------------------------------------------------------------------------------
    def add_annotator(self, name: str, token: str | None = None) -> str:
        """Create an annotator and return their token (generated unless given; >= 16 characters)."""
        name = name.strip()
        if not NAME_RE.match(name):
            raise StoreError(f"annotator name {name!r}: use 1-64 letters, digits, spaces or . @ + - _ (starting with a letter or digit)")
        token = token if token is not None else secrets.token_urlsafe(18)
        if len(token) < MIN_TOKEN_LENGTH:
            raise StoreError(f"token for {name!r}: at least {MIN_TOKEN_LENGTH} characters")
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM annotators WHERE name=?", (name,)).fetchone():
                raise Conflict(f"annotator {name!r} already exists (use reset-token for a new token)")
            try:
                conn.execute("INSERT INTO annotators(name, token_hash, created_at) VALUES (?, ?, ?)", (name, hash_token(token), time.time()))
            except sqlite3.IntegrityError:
                raise Conflict("that token is already in use by another annotator") from None
        return token

    def reset_token(self, name: str) -> str:
        """Give an annotator a new token (the old one stops working) and return it."""
        token = secrets.token_urlsafe(18)
        with self.write() as conn:
            cur = conn.execute("UPDATE annotators SET token_hash=? WHERE name=?", (hash_token(token), name))
            if cur.rowcount == 0:
                raise NotFound(f"no annotator named {name!r}")
        return token

    def set_active(self, name: str, active: bool) -> None:
        """Revoke (``False``) or restore an annotator; their answers are kept either way."""
        with self.write() as conn:
            cur = conn.execute("UPDATE annotators SET active=? WHERE name=?", (int(active), name))
            if cur.rowcount == 0:
                raise NotFound(f"no annotator named {name!r}")
            if not active:
                conn.execute("UPDATE assignments SET status='cancelled' WHERE status='pending' AND annotator_id="
                             "(SELECT id FROM annotators WHERE name=?)", (name,))

    def annotators(self) -> list[dict]:
        with self.read() as conn:
            rows = conn.execute(
                "SELECT a.name, a.active, a.created_at, "
                "(SELECT COUNT(*) FROM judgements j WHERE j.annotator_id=a.id AND j.undone_at IS NULL) AS answers "
                "FROM annotators a ORDER BY a.id").fetchall()
        return [dict(r) for r in rows]

    def authenticate(self, token: str | None) -> Annotator | None:
        """The active annotator holding ``token``, or ``None``."""
        if not token or len(token) > 256:
            return None
        with self.connect() as conn:
            row = conn.execute("SELECT id, name FROM annotators WHERE token_hash=? AND active=1", (hash_token(token),)).fetchone()
        return Annotator(row["id"], row["name"]) if row else None

    # -- scheduling --------------------------------------------------------------------------------
    def _static_data(self, conn: sqlite3.Connection) -> _Static:
        key = tuple(conn.execute("SELECT (SELECT COUNT(*) FROM pairs), (SELECT MAX(id) FROM pairs), "
                                 "(SELECT COUNT(*) FROM items), (SELECT COUNT(*) FROM metrics)").fetchone())
        with self._static_lock:
            if self._static is not None and self._static.key == key:
                return self._static
        items = {r["id"]: r for r in conn.execute("SELECT id, generator, metrics FROM items")}
        directions = {r[0]: bool(r[1]) for r in conn.execute("SELECT name, higher_is_better FROM metrics")}
        metrics = {i: json.loads(r["metrics"]) for i, r in items.items()}
        generators = sorted({r["generator"] for r in items.values() if r["generator"] is not None})
        gindex = {g: k for k, g in enumerate(generators)}
        pairs = conn.execute("SELECT id, item_a, item_b FROM pairs ORDER BY id").fetchall()
        pair_ids = np.array([p[0] for p in pairs], dtype=np.int64)
        item_a = np.array([p[1] for p in pairs], dtype=np.int64)
        item_b = np.array([p[2] for p in pairs], dtype=np.int64)
        gen = lambda i: gindex.get(items[i]["generator"], -1)  # noqa: E731
        static = _Static(
            key=key, pair_ids=pair_ids, item_a=item_a, item_b=item_b,
            gen_a=np.array([gen(i) for i in item_a], dtype=np.int64),
            gen_b=np.array([gen(i) for i in item_b], dtype=np.int64),
            disagreement=np.array([metric_disagreement(metrics[a], metrics[b], directions) for a, b in zip(item_a, item_b)]),
            generators=generators,
            index={int(p): k for k, p in enumerate(pair_ids)},
        )
        with self._static_lock:
            self._static = static
        return static

    def _fit(self, conn: sqlite3.Connection, static: _Static) -> BTFit | None:
        rows = conn.execute("SELECT pair_id, label FROM judgements WHERE undone_at IS NULL AND is_repeat=0 AND label != 'skip'").fetchall()
        if not static.generators:
            return None
        first, second, outcome = [], [], []
        for pair_id, label in rows:
            k = static.index.get(pair_id)
            if k is None:
                continue
            ga, gb = static.gen_a[k], static.gen_b[k]
            if ga < 0 or gb < 0 or ga == gb:
                continue
            first.append(ga)
            second.append(gb)
            outcome.append({"a": 1.0, "b": 0.0, "tie": 0.5}[label])
        return fit_bradley_terry(len(static.generators), np.array(first), np.array(second), np.array(outcome), names=static.generators)

    def _describe(self, conn: sqlite3.Connection, assignment: sqlite3.Row) -> dict:
        pair = conn.execute("SELECT item_a, item_b FROM pairs WHERE id=?", (assignment["pair_id"],)).fetchone()
        left, right = (pair[0], pair[1]) if assignment["left_is_a"] else (pair[1], pair[0])
        prompt, left_id = conn.execute("SELECT prompt, public_id FROM items WHERE id=?", (left,)).fetchone()
        right_id = conn.execute("SELECT public_id FROM items WHERE id=?", (right,)).fetchone()[0]
        return {"assignment_id": assignment["id"], "prompt": prompt,
                "left": {"item_id": left_id, "url": f"/api/image/{left_id}"},
                "right": {"item_id": right_id, "url": f"/api/image/{right_id}"}}

    def progress(self, annotator_id: int, conn: sqlite3.Connection | None = None) -> dict:
        """``answered`` (first answers, skips included), ``repeats``, ``remaining`` (pairs this
        annotator has not answered), ``total`` pairs, ``covered`` pairs (>= min_votes non-skip answers)."""
        if conn is None:
            with self.read() as c:
                return self.progress(annotator_id, c)
        q = lambda sql, *a: conn.execute(sql, a).fetchone()[0]  # noqa: E731
        total = q("SELECT COUNT(*) FROM pairs")
        answered = q("SELECT COUNT(*) FROM judgements WHERE annotator_id=? AND undone_at IS NULL AND is_repeat=0", annotator_id)
        repeats = q("SELECT COUNT(*) FROM judgements WHERE annotator_id=? AND undone_at IS NULL AND is_repeat=1", annotator_id)
        covered = q("SELECT COUNT(*) FROM (SELECT pair_id FROM judgements WHERE undone_at IS NULL AND is_repeat=0 AND label != 'skip' "
                    "GROUP BY pair_id HAVING COUNT(*) >= ?)", max(self.scheduler.min_votes, 1))
        return {"answered": answered, "repeats": repeats, "remaining": total - answered, "total": total, "covered": covered}

    def next_assignment(self, annotator_id: int) -> dict | None:
        """The pair this annotator should judge now (the pending one if any, else a newly chosen one,
        recorded as pending); ``None`` when they have answered every pair."""
        cfg = self.scheduler
        with self.write() as conn:
            pending = conn.execute("SELECT * FROM assignments WHERE annotator_id=? AND status='pending'", (annotator_id,)).fetchone()
            if pending is not None:
                return self._describe(conn, pending)
            static = self._static_data(conn)
            n_assigned = conn.execute("SELECT COUNT(*) FROM assignments WHERE annotator_id=?", (annotator_id,)).fetchone()[0]
            rng = rng_for(cfg.seed, annotator_id, n_assigned)
            now = time.time()
            if wants_repeat(cfg, rng):
                pair_id = pick_repeat(self._repeat_eligible(conn, annotator_id), rng)
                if pair_id is not None:
                    original = conn.execute("SELECT left_is_a FROM judgements WHERE annotator_id=? AND pair_id=? AND is_repeat=0 "
                                            "AND undone_at IS NULL", (annotator_id, pair_id)).fetchone()[0]
                    return self._assign(conn, annotator_id, pair_id, 1 - original, 1, "repeat", now)
            seen = {r[0] for r in conn.execute("SELECT pair_id FROM judgements WHERE annotator_id=? AND undone_at IS NULL AND is_repeat=0",
                                               (annotator_id,))}
            mask = np.array([int(p) not in seen for p in static.pair_ids], dtype=bool)
            if not mask.any():
                return None
            votes = np.zeros(len(static.pair_ids))
            for pair_id, n in conn.execute("SELECT pair_id, COUNT(*) FROM judgements WHERE undone_at IS NULL AND is_repeat=0 "
                                           "AND label != 'skip' GROUP BY pair_id"):
                if pair_id in static.index:
                    votes[static.index[pair_id]] += n
            for pair_id, n in conn.execute("SELECT pair_id, COUNT(*) FROM assignments WHERE status='pending' AND is_repeat=0 "
                                           "AND annotator_id != ? AND created_at > ? GROUP BY pair_id", (annotator_id, now - cfg.pending_ttl_s)):
                if pair_id in static.index:
                    votes[static.index[pair_id]] += n
            item_votes: dict[int, float] = {}
            for a, b, v in zip(static.item_a, static.item_b, votes):
                item_votes[int(a)] = item_votes.get(int(a), 0) + v
                item_votes[int(b)] = item_votes.get(int(b), 0) + v
            idx = np.flatnonzero(mask)
            cands = Candidates(
                pair_ids=static.pair_ids[idx], votes=votes[idx],
                item_votes=np.array([item_votes[int(static.item_a[k])] + item_votes[int(static.item_b[k])] for k in idx]),
                disagreement=static.disagreement[idx], gen_a=static.gen_a[idx], gen_b=static.gen_b[idx])
            fit = self._fit(conn, static) if cands.votes.min() >= cfg.min_votes else None  # only the active phase uses it
            k, reason = choose(cands, cfg, rng, fit)
            return self._assign(conn, annotator_id, int(cands.pair_ids[k]), int(rng.random() < 0.5), 0, reason, now)

    def _repeat_eligible(self, conn: sqlite3.Connection, annotator_id: int) -> list[int]:
        rows = conn.execute("SELECT pair_id, label, is_repeat FROM judgements WHERE annotator_id=? AND undone_at IS NULL ORDER BY id",
                            (annotator_id,)).fetchall()
        repeated = {r[0] for r in rows if r[2]}
        gap = self.scheduler.repeat_gap
        old_enough = rows[: max(len(rows) - gap, 0)]
        return [r[0] for r in old_enough if not r[2] and r[1] != "skip" and r[0] not in repeated]

    def _assign(self, conn, annotator_id: int, pair_id: int, left_is_a: int, is_repeat: int, reason: str, now: float) -> dict:
        cur = conn.execute("INSERT INTO assignments(annotator_id, pair_id, left_is_a, is_repeat, reason, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (annotator_id, pair_id, left_is_a, is_repeat, reason, now))
        row = conn.execute("SELECT * FROM assignments WHERE id=?", (cur.lastrowid,)).fetchone()
        return self._describe(conn, row)

    # -- answers -----------------------------------------------------------------------------------
    def answer(self, annotator_id: int, assignment_id: int, choice: str) -> dict:
        """Record ``choice`` (left / right / tie / skip) for a pending assignment of this annotator.
        Sending the same answer twice is harmless; a different answer to an answered pair is refused
        (use undo). Returns the stored label (``a``/``b``/``tie``/``skip`` in pair order) and progress."""
        if choice not in CHOICES:
            raise StoreError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        with self.write() as conn:
            a = conn.execute("SELECT * FROM assignments WHERE id=? AND annotator_id=?", (assignment_id, annotator_id)).fetchone()
            if a is None:
                raise NotFound(f"no assignment {assignment_id} for this annotator")
            label = _label(choice, bool(a["left_is_a"]))
            if a["status"] == "answered":
                prev = conn.execute("SELECT label FROM judgements WHERE assignment_id=? AND undone_at IS NULL", (assignment_id,)).fetchone()
                if prev is not None and prev[0] == label:
                    return {"label": label, "duplicate": True, "progress": self.progress(annotator_id, conn)}
                raise Conflict(f"assignment {assignment_id} was already answered (undo it first to change the answer)")
            if a["status"] == "cancelled":
                raise Conflict(f"assignment {assignment_id} was withdrawn (after an undo); load the current pair")
            conn.execute("INSERT INTO judgements(assignment_id, annotator_id, pair_id, label, left_is_a, is_repeat, shown_at, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (assignment_id, annotator_id, a["pair_id"], label, a["left_is_a"], a["is_repeat"], a["created_at"], time.time()))
            conn.execute("UPDATE assignments SET status='answered' WHERE id=?", (assignment_id,))
            return {"label": label, "duplicate": False, "progress": self.progress(annotator_id, conn)}

    def undo(self, annotator_id: int) -> dict:
        """Withdraw this annotator's latest answer (kept in the database, marked undone); its pair
        becomes the pending one again. Repeated undos go further back. Returns that pair."""
        with self.write() as conn:
            last = conn.execute("SELECT id, assignment_id FROM judgements WHERE annotator_id=? AND undone_at IS NULL ORDER BY id DESC LIMIT 1",
                                (annotator_id,)).fetchone()
            if last is None:
                raise Conflict("nothing to undo")
            now = time.time()
            conn.execute("UPDATE assignments SET status='cancelled' WHERE annotator_id=? AND status='pending'", (annotator_id,))
            conn.execute("UPDATE judgements SET undone_at=? WHERE id=?", (now, last["id"]))
            conn.execute("UPDATE assignments SET status='pending', created_at=? WHERE id=?", (now, last["assignment_id"]))
            row = conn.execute("SELECT * FROM assignments WHERE id=?", (last["assignment_id"],)).fetchone()
            return self._describe(conn, row)

    # -- reading everything ------------------------------------------------------------------------
    def judgement_rows(self, include_undone: bool = False) -> list[dict]:
        """Every answer joined with its pair, images, generators, metric scores and annotator."""
        sql = (
            "SELECT j.id, j.pair_id, j.label, j.left_is_a, j.is_repeat, j.shown_at, j.created_at, j.undone_at, "
            "an.name AS annotator, ia.prompt_key, ia.prompt, ia.path AS path_a, ib.path AS path_b, "
            "ia.generator AS generator_a, ib.generator AS generator_b, ia.metrics AS metrics_a, ib.metrics AS metrics_b "
            "FROM judgements j JOIN pairs p ON p.id = j.pair_id JOIN items ia ON ia.id = p.item_a JOIN items ib ON ib.id = p.item_b "
            "JOIN annotators an ON an.id = j.annotator_id"
            + ("" if include_undone else " WHERE j.undone_at IS NULL") + " ORDER BY j.id")
        with self.read() as conn:
            rows = [dict(r) for r in conn.execute(sql)]
        for r in rows:
            r["metrics_a"] = json.loads(r["metrics_a"])
            r["metrics_b"] = json.loads(r["metrics_b"])
        return rows

    def metric_columns(self) -> list[MetricColumn]:
        with self.read() as conn:
            return [MetricColumn(r[0], bool(r[1])) for r in conn.execute("SELECT name, higher_is_better FROM metrics ORDER BY name")]

    def generators(self) -> list[str]:
        with self.read() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT generator FROM items WHERE generator IS NOT NULL ORDER BY generator")]
