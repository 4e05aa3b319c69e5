"""The run database: every pruning run, kept in SQLite so results outlive a session.

One table ``runs`` (one row per run, readable with plain SQL) in a SQLite file in WAL mode;
the pruned weight and mask of each finished run sit beside it as content-addressed
``.safetensors`` files (``<db>.files/<sha256>.safetensors``) that the row names. Whole-model runs
(:func:`obsviz.model.run_methods`) have a table of their own, ``model_runs``: one row per run
with its JSON report, updated as each method finishes (the pruned checkpoints are not kept).
Layer-sensitivity scans (:func:`obsviz.sensitivity.scan`) have ``sensitivity_scans``: one row per
scan with its JSON data and the plans checked from it, updated as layers finish.

Consistency rules:

- a file is written to a temporary name and ``os.replace``-d into place, and only then is the
  row inserted (one transaction): a process killed at any point leaves no row that names a
  missing file (at worst an unreferenced file);
- a finished trial (``status = 'done'``) is stored once per ``key`` (a unique index): two
  writers racing on one trial keep one row and both get its id;
- every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent processes serialise.

The schema has a version (``PRAGMA user_version``) and a migration path: opening an older
store upgrades it, a store from a newer obsviz is refused with a clear message, and so is a
SQLite file whose tables are not those of its version (checked against the migrations
themselves: a new table slots in with its migration).

Files are checked against their name when read and before one is reused: a file missing,
truncated or changed behind the store is a :class:`StoredTensorsError`, never weights read
back silently. A store on a read-only filesystem (or a file this user may not write) opens
read-only (``RunStore.readonly``): every read works, every write is a :class:`StoreError`.
Writes that cannot be made (another writer holding the lock past the busy timeout, a full
disk) are :class:`StoreError` too, with ``transient`` set when trying again may succeed.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import os
import re
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from obsviz.errors import ArgumentError
from obsviz.geometry import PRESETS, Geometry, run_name
from obsviz.owner import process_token, token_alive

__all__ = ["SCHEMA_VERSION", "STORE_ENV", "TENSORS_GONE", "RunStore", "StoredModelRun",
           "StoredRun", "StoredScan", "StoreError", "StoredTensorsError", "default_store_path",
           "geometry_key", "geometry_label", "layer_hash", "trial_key"]

STORE_ENV = "OBSVIZ_STORE"
SCHEMA_VERSION = 7
STATUSES = ("done", "failed")
#: A whole-model run: ``running`` while methods go (or killed before it could say otherwise),
#: ``done``, ``stopped`` (by the user, between methods) or ``failed``.
MODEL_STATUSES = ("running", "done", "stopped", "failed")
#: Largest report read back (bytes of JSON; the whole MiniLM with nine methods is ~0.1 MB).
MAX_REPORT_BYTES = 32 * 2**20
_BUSY_TIMEOUT_S = 60.0
#: A ``.tmp-*.part`` file this much older than now is the orphan of a killed write (a live one
#: is written to continuously, then moved into place within seconds).
ORPHAN_AGE_S = 600.0
#: What the pages say of a run whose tensor files are missing or changed (its row still shows).
TENSORS_GONE = "the stored weights of this run are missing or changed"
_FILE_RE = re.compile(r"^[0-9a-f]{64}\.safetensors$")

#: Columns of ``runs`` in order (``id`` first). Plain SQL readers rely on these names.
COLUMNS = ("id", "time", "key", "sweep", "layer", "source", "layer_hash", "shape", "geometry",
           "geometry_spec", "nnz", "method", "options", "damp", "rel_error", "sparsity",
           "seconds", "device", "obsviz_version", "torch_version", "status", "error",
           "weight_file", "mask_file")
#: Columns of ``model_runs`` in order.
MODEL_COLUMNS = ("id", "created", "updated", "name", "kind", "plan", "hessians", "methods",
                 "finished", "status", "error", "report", "obsviz_version", "torch_version",
                 "owner")
#: Columns of ``sensitivity_scans`` in order.
SCAN_COLUMNS = ("id", "created", "updated", "name", "kind", "plan", "layers", "total", "checks",
                "status", "error", "scan", "obsviz_version", "torch_version", "owner")
#: Columns ``RunStore.runs(**where)`` filters on.
FILTERS = ("id", "key", "sweep", "layer", "source", "layer_hash", "geometry", "nnz", "method",
           "damp", "device", "status")


class StoreError(ArgumentError):
    """A store that cannot be used (not an obsviz database, from a newer obsviz, read-only) or
    a write that could not be made. ``transient``: trying again later may succeed (another
    writer held the lock)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__("store", message)
        self.transient = transient


class StoredTensorsError(StoreError):
    """A run's tensor file is missing, or its content is not the one its name is the digest of
    (truncated, changed). The row (metrics) is fine; only the weights are gone."""


def default_store_path() -> Path:
    """``$OBSVIZ_STORE`` when set, else ``runs.sqlite`` in the per-user data folder:
    ``$XDG_DATA_HOME/obsviz`` (default ``~/.local/share/obsviz``) on Linux,
    ``~/Library/Application Support/obsviz`` on macOS, ``%LOCALAPPDATA%\\obsviz`` on Windows."""
    env = os.environ.get(STORE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "obsviz" / "runs.sqlite"


# ---- keys and hashes --------------------------------------------------------------------------


def layer_hash(weight: torch.Tensor, hessian: torch.Tensor) -> str:
    """sha256 (hex) of a layer's content: shapes, then W and H as contiguous float32 bytes."""
    h = hashlib.sha256()
    for t in (weight, hessian):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(json.dumps(list(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def geometry_key(geometry: Geometry) -> str:
    """A canonical string for a geometry's structure (two geometries with equal keys prune
    alike): ``Geometry.key``, the one identity ``==``, hashes and caches use too."""
    return geometry.key


def geometry_label(geometry: Geometry, nnz: int | None = None) -> str:
    """The preset name when the geometry is one (``"2:4"``, ``"coupled-2:4"``, any ``N:M``),
    else its description (view, block, scope). With ``nnz``, the name of what is run
    (``obsviz.geometry.run_name``): ``"4:8"`` at nnz 1 is ``"1:8"``, block16 at nnz 2 is
    ``"block16 at nnz = 2"``."""
    name = geometry.name
    if isinstance(name, str) and (name in PRESETS or re.fullmatch(r"\d+:\d+", name)):
        try:
            if Geometry.preset(name, geometry.weight_shape) == geometry:
                return name if nnz is None else run_name(name, nnz)
        except ValueError:
            pass
    return geometry.describe()


def _canonical(value: Any) -> Any:
    """JSON-safe, order-independent form of options (dict keys sorted, tuples as lists)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def trial_key(layer_hash: str, geometry: Geometry | str, nnz: int, method: str, options: dict,
              damp: float, rows: Any = None) -> str:
    """The identity of a trial: sha256 of (layer content hash, geometry key, nnz, method,
    resolved options, damp, rows). Equal keys mean the same computation. ``geometry`` may be
    a string standing for one that cannot be built (a preset that does not fit the layer)."""
    gkey = geometry if isinstance(geometry, str) else geometry_key(geometry)
    payload = _dumps({"layer": layer_hash, "geometry": gkey, "nnz": int(nnz),
                      "method": method, "options": options, "damp": float(damp),
                      "rows": rows})
    return hashlib.sha256(payload.encode()).hexdigest()


# ---- rows ---------------------------------------------------------------------------------------


@dataclass
class StoredRun:
    """One row of ``runs``. JSON columns come back decoded (``shape`` a tuple, ``options`` and
    ``geometry_spec`` dicts)."""

    id: int
    time: str
    key: str | None
    sweep: str | None
    layer: str
    source: str
    layer_hash: str | None
    shape: tuple[int, int]
    geometry: str                 # what was run ("1:8", "block16 at nnz = 2") or the description
    geometry_spec: dict           # Geometry.to_dict()
    nnz: int
    method: str
    options: dict
    damp: float | None
    rel_error: float | None
    sparsity: float | None
    seconds: float | None
    device: str | None
    obsviz_version: str
    torch_version: str
    status: str
    error: str | None
    weight_file: str | None
    mask_file: str | None
    extra: dict = field(default_factory=dict, repr=False)

    def geometry_obj(self) -> Geometry:
        """The geometry rebuilt from the stored spec (``ValueError`` for a failed run whose
        geometry could not be built)."""
        if "preset" in self.geometry_spec:
            return Geometry.preset(self.geometry_spec["preset"], self.shape)
        return Geometry.from_dict(self.geometry_spec)

    def as_dict(self) -> dict:
        """Plain data (a table row): the columns, JSON columns decoded."""
        d = asdict(self)
        d.pop("extra")
        d["shape"] = list(self.shape)
        return d


def _row_to_run(row: sqlite3.Row) -> StoredRun:
    d = dict(row)
    for k in ("options", "geometry_spec"):
        try:
            d[k] = json.loads(d[k]) if d[k] else {}
        except (TypeError, ValueError):
            d[k] = {}
    try:
        d["shape"] = tuple(int(v) for v in json.loads(d["shape"]))
    except (TypeError, ValueError):
        d["shape"] = ()
    known = {k: d.pop(k) for k in COLUMNS}
    try:  # rows written before names said what was run ("4:8" at nnz 1 read as "1:8")
        known["geometry"] = run_name(str(known["geometry"]), int(known["nnz"]))
    except (TypeError, ValueError):
        pass
    asked = d.pop("asked_layer", None)
    if asked is not None and asked != known["layer"]:   # the name a sweep asked for it by
        d["stored_layer"], known["layer"] = known["layer"], asked
    return StoredRun(**known, extra=d)


@dataclass
class StoredModelRun:
    """One row of ``model_runs`` (a whole-model run). ``methods`` are the methods asked for,
    ``finished`` those that ran to the end; ``report`` is the checked report
    (``RunStore.model_run``), ``None`` in listings."""

    id: int
    created: str
    updated: str
    name: str
    kind: str
    plan: str                     # one line: geometry, nnz, include/exclude, overrides
    hessians: str
    methods: list[str]
    finished: list[str]
    status: str
    error: str | None
    obsviz_version: str
    torch_version: str
    report: dict | None = field(default=None, repr=False)


@dataclass
class StoredScan:
    """One row of ``sensitivity_scans``: ``layers`` scanned of ``total``, ``checks`` plans
    checked; ``scan`` is the checked scan (``RunStore.scan``), ``None`` in listings."""

    id: int
    created: str
    updated: str
    name: str
    kind: str
    plan: str
    layers: int
    total: int
    checks: int
    status: str
    error: str | None
    obsviz_version: str
    torch_version: str
    scan: dict | None = field(default=None, repr=False)


def _json_list(text: object) -> list[str]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    return [str(v) for v in value] if isinstance(value, list) else []


def _row_to_model_run(row: sqlite3.Row, report: dict | None = None) -> StoredModelRun:
    d = {k: row[k] for k in MODEL_COLUMNS if k not in ("report", "owner")}
    d["methods"], d["finished"] = _json_list(d["methods"]), _json_list(d["finished"])
    return StoredModelRun(**d, report=report)


# ---- schema ------------------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    time            TEXT NOT NULL,
    key             TEXT,
    sweep           TEXT,
    layer           TEXT NOT NULL,
    source          TEXT NOT NULL DEFAULT '',
    layer_hash      TEXT,
    shape           TEXT NOT NULL,
    geometry        TEXT NOT NULL,
    geometry_spec   TEXT NOT NULL,
    nnz             INTEGER NOT NULL,
    method          TEXT NOT NULL,
    options         TEXT NOT NULL DEFAULT '{}',
    damp            REAL,
    rel_error       REAL,
    sparsity        REAL,
    seconds         REAL,
    device          TEXT,
    obsviz_version  TEXT NOT NULL,
    torch_version   TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    error           TEXT,
    weight_file     TEXT,
    mask_file       TEXT,
    CHECK (status = 'failed' OR rel_error IS NOT NULL)
);
CREATE UNIQUE INDEX runs_done_key ON runs(key) WHERE status = 'done' AND key IS NOT NULL;
CREATE INDEX runs_key ON runs(key);
CREATE INDEX runs_sweep ON runs(sweep);
CREATE INDEX runs_layer_method ON runs(layer, method);
"""

# v2: a run belongs to every sweep that asked for it (a trial done by one sweep and skipped by
# another shows in both); ``runs.sweep`` stays the sweep that ran it.
_SCHEMA_V2 = """
CREATE TABLE sweep_runs (
    sweep   TEXT NOT NULL,
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    PRIMARY KEY (sweep, run_id)
) WITHOUT ROWID;
CREATE INDEX sweep_runs_run ON sweep_runs(run_id);
INSERT INTO sweep_runs (sweep, run_id) SELECT sweep, id FROM runs WHERE sweep IS NOT NULL;
"""

# v3: whole-model runs, one row each; ``report`` is the JSON report of obsviz.model.run_methods,
# ``plan`` a one-line summary of its plan, ``methods``/``finished`` JSON lists of method names.
_SCHEMA_V3 = """
CREATE TABLE model_runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created         TEXT NOT NULL,
    updated         TEXT NOT NULL,
    name            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    plan            TEXT NOT NULL,
    hessians        TEXT NOT NULL,
    methods         TEXT NOT NULL,
    finished        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('running', 'done', 'stopped', 'failed')),
    error           TEXT,
    report          TEXT NOT NULL,
    obsviz_version  TEXT NOT NULL,
    torch_version   TEXT NOT NULL
);
"""

# v4: layer-sensitivity scans (obsviz.sensitivity), one row each; ``scan`` is the JSON scan with
# its checked plans (``checks``), ``layers``/``checks`` how many of each it holds.
_SCHEMA_V4 = """
CREATE TABLE sensitivity_scans (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created         TEXT NOT NULL,
    updated         TEXT NOT NULL,
    name            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    plan            TEXT NOT NULL,
    layers          INTEGER NOT NULL,
    total           INTEGER NOT NULL,
    checks          INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('running', 'done', 'stopped', 'failed')),
    error           TEXT,
    scan            TEXT NOT NULL,
    obsviz_version  TEXT NOT NULL,
    torch_version   TEXT NOT NULL
);
"""

# v5: the process that wrote a model run last (``obsviz.owner.process_token``): a ``running``
# row whose process is gone is marked stopped (``RunStore.stop_orphaned_model_runs``).
_SCHEMA_V5 = """
ALTER TABLE model_runs ADD COLUMN owner TEXT;
"""

# v6: the name a sweep asked for a run under (``sweep_runs.layer``). Two layers of equal contents
# and different names share one run (its key is the content's), and each is listed under its
# own name.
_SCHEMA_V6 = """
CREATE TABLE sweep_runs_v6 (
    sweep   TEXT NOT NULL,
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    layer   TEXT NOT NULL,
    PRIMARY KEY (sweep, run_id, layer)
) WITHOUT ROWID;
INSERT INTO sweep_runs_v6 (sweep, run_id, layer)
    SELECT s.sweep, s.run_id, r.layer FROM sweep_runs s JOIN runs r ON r.id = s.run_id;
DROP TABLE sweep_runs;
ALTER TABLE sweep_runs_v6 RENAME TO sweep_runs;
CREATE INDEX sweep_runs_run ON sweep_runs(run_id);
"""

# v7: the process that wrote a scan last (as v5 for model runs): a ``running`` scan whose process
# is gone is marked stopped (``RunStore.stop_orphaned_scans``). And the names a run was asked for
# by outside a sweep (``run_layers``: the app's runs; a sweep's are in ``sweep_runs.layer``): a
# layer of the same contents as another under a new name shares its run and keeps its name.
_SCHEMA_V7 = """
ALTER TABLE sensitivity_scans ADD COLUMN owner TEXT;
CREATE TABLE run_layers (
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    layer   TEXT NOT NULL,
    PRIMARY KEY (run_id, layer)
) WITHOUT ROWID;
"""

_NAME_RUN = ("INSERT OR IGNORE INTO run_layers (run_id, layer) SELECT id, ? FROM runs "
             "WHERE id = ? AND layer != ?")

#: ``MIGRATIONS[v]`` takes a store at schema version ``v`` to ``v + 1`` (one transaction each).
#: A new table or column is one more entry here (and ``SCHEMA_VERSION`` one more): the check
#: of a store's tables (``expected_tables``) follows from these.
MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4,
                              4: _SCHEMA_V5, 5: _SCHEMA_V6, 6: _SCHEMA_V7}


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _tables(con: sqlite3.Connection) -> dict[str, set[str]]:
    """Every table of a database (SQLite's own left out) with its column names."""
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")]
    return {n: {r[0] for r in con.execute("SELECT name FROM pragma_table_info(?)", (n,))}
            for n in names}


@functools.cache
def expected_tables(version: int) -> dict[str, frozenset[str]]:
    """The tables (with their columns) of an obsviz store at schema ``version``: the
    migrations up to it, run on an empty database in memory."""
    con = sqlite3.connect(":memory:")
    try:
        for v in range(version):
            for statement in _statements(MIGRATIONS[v]):
                con.execute(statement)
        return {n: frozenset(cols) for n, cols in _tables(con).items()}
    finally:
        con.close()


def _json_default(value: Any) -> Any:
    """What ``json.dumps`` cannot write itself (a dtype, a tensor, a path in a report)."""
    canonical = _canonical(value)
    return str(value) if canonical is value else canonical


def _read_report(text: object, run_id: int) -> dict:
    """A stored report parsed and checked; :class:`StoreError` for anything else."""
    from obsviz.model import check_report

    if not isinstance(text, str):
        raise StoreError(f"model run {run_id}: its report is not text")
    if len(text) > MAX_REPORT_BYTES:
        raise StoreError(f"model run {run_id}: its report is {len(text)} characters; at most "
                         f"{MAX_REPORT_BYTES} are read")
    try:
        return check_report(json.loads(text))
    except (ValueError, RecursionError) as e:   # junk JSON, nesting too deep, a bad field
        raise StoreError(f"model run {run_id}: its report is not a whole-model report "
                         f"({str(e)[:300]})") from None


def _versions() -> tuple[str, str]:
    from obsviz import __version__

    return __version__, torch.__version__


def _readonly_fs(folder: Path) -> bool:
    """Whether ``folder`` is on a filesystem mounted read-only."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):   # not there, or no statvfs (Windows)
        return False


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- the store ---------------------------------------------------------------------------------


class RunStore:
    """A run database at ``path`` (``None``: :func:`default_store_path`); created or migrated
    on open, or opened read-only (``readonly``) when it cannot be written. Safe to use from
    several threads and processes: each thread (of each process) has its own connection.
    ``busy_timeout``: seconds a write waits for another writer's lock before it is a
    :class:`StoreError` (``transient``)."""

    def __init__(self, path: str | os.PathLike | None = None, *,
                 busy_timeout: float = _BUSY_TIMEOUT_S) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        if self.path.is_dir():
            raise StoreError(f"store={str(self.path)!r} is a folder; give a file such as "
                             "runs.sqlite")
        self.busy_timeout = float(busy_timeout)
        self.files_dir = self.path.with_name(self.path.name + ".files")
        self._local = threading.local()
        self.readonly = not self._writable()
        self._target, self._uri = str(self.path), False
        try:
            if self.readonly:
                self._open_readonly()
            self._migrate()
        except BaseException:
            self.close()
            raise
        if not self.readonly:
            self._remove_orphans()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r}{', read-only' if self.readonly else ''})"

    # -- opening

    def _writable(self) -> bool:
        """Whether this process can write the store (create it when it is not there)."""
        folder = self.path.parent
        if not self.path.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"store={str(self.path)!r} cannot be created ({e.strerror}); "
                                 "set OBSVIZ_STORE to a file in a folder you can write") from None
            if not os.access(folder, os.W_OK) or _readonly_fs(folder):
                raise StoreError(f"store={str(self.path)!r} cannot be created: its folder is "
                                 "read-only; set OBSVIZ_STORE to a file in a folder you can "
                                 "write")
            return True
        return (os.access(self.path, os.R_OK | os.W_OK) and os.access(folder, os.W_OK)
                and not _readonly_fs(folder))

    def _open_readonly(self) -> None:
        """Connect read-only: ``mode=ro``, or, on a read-only filesystem where SQLite cannot
        keep its shared-memory file (a WAL store), ``immutable`` (nothing can change it)."""
        if not os.access(self.path, os.R_OK):
            raise StoreError(f"store={str(self.path)!r} cannot be read (permission denied)")
        url = "file:" + urllib.parse.quote(str(self.path.resolve()))
        for query in ("mode=ro", "immutable=1"):
            self._target, self._uri = f"{url}?{query}", True
            self.close()
            try:
                with self._connect() as con:
                    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return
            except sqlite3.OperationalError:
                if query == "immutable=1" or not _readonly_fs(self.path.parent):
                    raise StoreError(f"store={str(self.path)!r} is read-only and cannot be "
                                     "opened for reading either") from None

    def _remove_orphans(self) -> None:
        """Delete the temporary files of writes killed before they ended (``.tmp-*.part``
        older than ``ORPHAN_AGE_S``; a younger one may be another process's write)."""
        try:
            parts = list(self.files_dir.glob(".tmp-*.part"))
        except OSError:
            return
        now = time.time()
        for part in parts:
            try:
                if now - part.stat().st_mtime > ORPHAN_AGE_S:
                    part.unlink()
            except OSError:
                pass

    # -- connections

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (opened once: closing the last one checkpoints the WAL,
        which would cost a write per call)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # never reuse one across a fork
            con = sqlite3.connect(self._target, timeout=self.busy_timeout, isolation_level=None,
                                  check_same_thread=True, uri=self._uri)
            con.row_factory = sqlite3.Row
            # WAL + NORMAL: a commit survives a killed process (the consistency promised
            # here); only a power cut may lose the last commits, never half of one
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA foreign_keys = ON")
            local.con, local.pid = con, os.getpid()
        return local.con

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._connection()
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e) or "malformed" in str(e):
                raise StoreError(f"store={str(self.path)!r} is not an obsviz run database "
                                 f"({e})") from e
            raise

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        con = getattr(self._local, "con", None)
        if con is not None and getattr(self._local, "pid", None) == os.getpid():
            con.close()
        self._local.__dict__.clear()

    def _refuse_write(self) -> None:
        if self.readonly:
            raise StoreError(f"store={str(self.path)!r} is read-only (a read-only filesystem, "
                             "or a file you may not write): its runs can be read, nothing new "
                             "is kept in it")

    def _write_error(self, e: sqlite3.Error) -> StoreError:
        """What a write that SQLite refused means, in words."""
        text = str(e).lower()
        where = f"store={str(self.path)!r}"
        if "locked" in text or "busy" in text:
            return StoreError(f"{where} is locked by another writer (waited "
                              f"{self.busy_timeout:g} s); nothing was written",
                              transient=True)
        if "full" in text:
            return StoreError(f"the disk holding {where} is full; nothing was written")
        if "readonly" in text or "read-only" in text:
            return StoreError(f"{where} cannot be written (read-only); nothing was written")
        return StoreError(f"{where} could not be written ({e}); nothing was written")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue, not deadlock.
        Anything SQLite refuses (the lock held past the busy timeout, a full disk) is a
        :class:`StoreError`, the transaction rolled back."""
        self._refuse_write()
        with self._connect() as con:
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise self._write_error(e) from None
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as e:
                if con.in_transaction:
                    try:
                        con.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(e, sqlite3.OperationalError):
                    raise self._write_error(e) from None
                raise

    def _migrate(self) -> None:
        with self._connect() as con:   # read first: a file not obsviz's is left as it was
            version = self._checked_version(con)
        if self.readonly:
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"store={str(self.path)!r} is read-only and "
                    + ("empty" if version == 0 else f"has schema version {version}, from an "
                       f"older obsviz (this one reads {SCHEMA_VERSION}); open it once where it "
                       "can be written to upgrade it"))
            return
        with self._connect() as con:
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory
                con.execute("PRAGMA journal_mode = DELETE")
        with self._write() as con:
            version = self._checked_version(con)   # again: another process may have migrated
            while version < SCHEMA_VERSION:
                for statement in _statements(MIGRATIONS[version]):
                    con.execute(statement)
                version += 1
                con.execute(f"PRAGMA user_version = {int(version)}")

    def _checked_version(self, con: sqlite3.Connection) -> int:
        """The store's schema version, once its tables are those of that version (a newer
        version, a negative one, or other tables: :class:`StoreError`)."""
        where = f"store={str(self.path)!r}"
        version = int(con.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{where} has schema version {version}, written by a newer obsviz (this one "
                f"reads up to {SCHEMA_VERSION}); upgrade obsviz or choose another store")
        if version < 0:
            raise StoreError(f"{where} is not an obsviz run database (schema version "
                             f"{version})")
        have = _tables(con)
        if version == 0:
            if have:
                raise StoreError(f"{where} is not an obsviz run database: it has tables "
                                 f"({', '.join(sorted(have)[:5])}) but no obsviz schema "
                                 "version; it was not written by obsviz")
            return 0
        for table, columns in expected_tables(version).items():
            missing = sorted(columns - have.get(table, set()))
            if table not in have or missing:
                what = (f"no table {table!r}" if table not in have else
                        f"table {table!r} lacks {', '.join(missing[:5])}")
                raise StoreError(f"{where} is not an obsviz run database: it says schema "
                                 f"version {version} but has {what}")
        return version

    @property
    def schema_version(self) -> int:
        with self._connect() as con:
            return int(con.execute("PRAGMA user_version").fetchone()[0])

    # -- files

    def _put_tensor(self, name: str, tensor: torch.Tensor) -> str:
        """Write ``{name: tensor}`` as a safetensors file named by its sha256; returns the file
        name. Written to a temporary file and moved into place: never half a file. A file
        already there is reused only when its content is the one its name says."""
        from safetensors.torch import save

        self._refuse_write()
        data = save({name: tensor.detach().to("cpu").contiguous()})
        digest = hashlib.sha256(data).hexdigest()
        fname = digest + ".safetensors"
        target = self.files_dir / fname
        try:
            if target.is_file() and target.stat().st_size == len(data) \
                    and _file_digest(target) == digest:
                return fname
            self.files_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.files_dir, prefix=".tmp-", suffix=".part")
        except OSError as e:
            raise self._file_error(e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise self._file_error(e) from None
            raise
        return fname

    def _file_error(self, e: OSError) -> StoreError:
        why = ("the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT)
               else e.strerror or str(e))
        return StoreError(f"the pruned weights could not be written to {self.files_dir} "
                          f"({why}); nothing was written")

    def _read_tensor_file(self, fname: str) -> bytes:
        """The bytes of a stored tensor file, checked against the digest its name is
        (:class:`StoredTensorsError` when it is missing, truncated or changed)."""
        path = self.file_path(fname)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoredTensorsError(f"{TENSORS_GONE}: {fname} is missing from "
                                     f"{self.files_dir}") from None
        except OSError as e:
            raise StoredTensorsError(f"{TENSORS_GONE}: {fname} cannot be read "
                                     f"({e.strerror})") from None
        if hashlib.sha256(data).hexdigest() != fname.removesuffix(".safetensors"):
            raise StoredTensorsError(f"{TENSORS_GONE}: {fname} in {self.files_dir} is not "
                                     "what was stored (truncated or changed)")
        return data

    def file_path(self, fname: str) -> Path:
        """Where a stored tensor file lives; refuses any name that is not ``<sha256>.safetensors``
        (a row's text never becomes a path)."""
        if not isinstance(fname, str) or not _FILE_RE.fullmatch(fname):
            raise StoreError(f"tensor file name {fname!r} is not a content address")
        return self.files_dir / fname

    # -- writing

    def record(self, *, key: str | None, layer: str, source: str = "",
               layer_hash: str | None = None, shape, geometry: Geometry, nnz: int, method: str,
               options: dict | None = None, damp: float | None = None, result=None,
               status: str = "done", error: str | None = None, sweep: str | None = None) -> int:
        """Store one run and return its id.

        ``result`` (a :class:`obsviz.PruneResult`) is required when ``status='done'``: its
        ``rel_error``, sparsity, ``seconds`` and device go in the row, its mask and pruned weight
        in content-addressed files. ``status='failed'`` needs ``error`` (the message).

        A trial ``key`` has at most one finished row: when it is already stored as done, no
        row is written and the existing id is returned (filed under ``sweep`` with this
        ``layer`` name, or outside a sweep kept as one more of its names, ``layer_names``: a
        layer of the same contents under another name shares the run). A
        finished run replaces the trial's failures; a failure replaces the earlier failures of
        the trial under the same layer name.
        """
        if status not in STATUSES:
            raise ArgumentError("status", f"status={status!r} is unknown; valid: "
                                f"{', '.join(STATUSES)}")
        if isinstance(geometry, str) and status == "failed":  # a preset that did not fit
            label, spec = run_name(geometry, int(nnz)), {"preset": geometry}
        elif isinstance(geometry, Geometry):
            label, spec = geometry_label(geometry, int(nnz)), geometry.to_dict()
        else:
            raise ArgumentError("geometry", f"geometry={geometry!r} must be an obsviz.Geometry "
                                "(or, for a failed run, the name of the preset that failed)")
        self._refuse_write()
        if status == "done" and result is None:
            raise ArgumentError("result", "status='done' needs result (a PruneResult)")
        if status == "failed" and not error:
            raise ArgumentError("error", "status='failed' needs error (what went wrong)")
        try:
            shape_t = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            raise ArgumentError("shape", f"shape={shape!r} must be (M, K)") from None
        if len(shape_t) != 2:
            raise ArgumentError("shape", f"shape={shape!r} must be (M, K)")
        options = dict(options or {})
        rel = spars = secs = None
        device = options.get("device")
        weight_file = mask_file = None
        if result is not None:
            from obsviz.metrics import sparsity

            rel, secs = float(result.rel_error), float(result.seconds)
            spars = sparsity(result.mask)
            device = result.options.get("device", device)
            if status == "done":  # files first, the row after
                weight_file = self._put_tensor("weight", result.weight)
                mask_file = self._put_tensor("mask", result.mask.to(torch.bool))
        obsviz_version, torch_version = _versions()
        row = {
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "key": key, "sweep": sweep, "layer": str(layer), "source": str(source or ""),
            "layer_hash": layer_hash, "shape": json.dumps(list(shape_t)),
            "geometry": label, "geometry_spec": _dumps(spec),
            "nnz": int(nnz), "method": str(method), "options": _dumps(options),
            "damp": None if damp is None else float(damp), "rel_error": rel, "sparsity": spars,
            "seconds": secs, "device": device, "obsviz_version": obsviz_version,
            "torch_version": torch_version, "status": status,
            "error": None if error is None else str(error), "weight_file": weight_file,
            "mask_file": mask_file,
        }
        names = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._write() as con:
            run_id = None
            if key is not None:
                found = con.execute("SELECT id FROM runs WHERE key = ? AND status = 'done'",
                                    (key,)).fetchone()
                if found is not None:  # finished already (a racing writer, a late failure)
                    run_id = int(found[0])
                elif status == "done":  # replaces the trial's failures: one row per trial
                    con.execute("DELETE FROM runs WHERE key = ? AND status = 'failed'", (key,))
                else:   # a failure replaces the earlier ones under this name
                    con.execute("DELETE FROM runs WHERE key = ? AND status = 'failed' AND "
                                "layer = ?", (key, row["layer"]))
            if run_id is None:
                run_id = int(con.execute(f"INSERT INTO runs ({names}) VALUES ({marks})",
                                         row).lastrowid)
            if sweep is not None:
                con.execute("INSERT OR IGNORE INTO sweep_runs (sweep, run_id, layer) "
                            "VALUES (?, ?, ?)", (sweep, run_id, row["layer"]))
            else:
                con.execute(_NAME_RUN, (row["layer"], run_id, row["layer"]))
            return run_id

    def name_run(self, run_id: int, layer: str) -> None:
        """Keep ``layer`` as one more name of a stored run (a layer of the same contents under
        another name that reuses it outside a sweep; ``layer_names`` lists them)."""
        with self._write() as con:
            con.execute(_NAME_RUN, (str(layer), int(run_id), str(layer)))

    def add_to_sweep(self, sweep: str, run_ids: list[int],
                     layers: list[str] | None = None) -> None:
        """File existing runs under ``sweep`` too (a sweep that found them already done), each
        under the layer name the sweep asked for it by (``layers``, one per run; default the
        name the run was stored with)."""
        if layers is not None and len(layers) != len(run_ids):
            raise ArgumentError("layers", f"{len(layers)} layer names for {len(run_ids)} runs")
        with self._write() as con:
            con.executemany(
                "INSERT OR IGNORE INTO sweep_runs (sweep, run_id, layer) SELECT ?, id, "
                "coalesce(?, layer) FROM runs WHERE id = ?",
                [(sweep, None if layers is None else str(layers[i]), int(rid))
                 for i, rid in enumerate(run_ids)])

    def delete(self, run_id: int) -> None:
        """Remove a run's row and its sweep memberships (its files stay: other runs may share
        them)."""
        with self._write() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (int(run_id),))

    def record_model_run(self, report: dict, *, methods: list[str] | None = None,
                         status: str = "running", error: str | None = None,
                         run_id: int | None = None) -> int:
        """Store a whole-model run's report (:func:`obsviz.model.run_methods`) and return the
        row's id: a new row, or with ``run_id`` the same row updated (call it after each method
        finishes, and once more with the final ``status``). ``methods``: those asked for
        (default: the report's). The report is checked first (``check_report``)."""
        from obsviz.model import check_report, finished_methods, plan_summary

        if status not in MODEL_STATUSES:
            raise ArgumentError("status", f"status={status!r} is unknown; valid: "
                                f"{', '.join(MODEL_STATUSES)}")
        check_report(report)
        try:
            text = json.dumps(report, default=_json_default, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise ArgumentError("report", f"report cannot be written as JSON ({e})") from None
        asked = list(report["methods"]) if methods is None else [str(m) for m in methods]
        obsviz_version, torch_version = _versions()
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        row = {"updated": now, "name": report["model"]["name"], "kind": report["model"]["kind"],
               "plan": plan_summary(report["plan"]), "hessians": report["hessians"],
               "methods": json.dumps(asked), "finished": json.dumps(finished_methods(report)),
               "status": status, "error": None if error is None else str(error),
               "report": text, "obsviz_version": obsviz_version, "torch_version": torch_version,
               "owner": process_token()}
        with self._write() as con:
            if run_id is not None:
                sets = ", ".join(f"{k} = :{k}" for k in row)
                if con.execute(f"UPDATE model_runs SET {sets} WHERE id = :id",
                               {**row, "id": int(run_id)}).rowcount:
                    return int(run_id)
            row["created"] = now
            names, marks = ", ".join(row), ", ".join(f":{k}" for k in row)
            return int(con.execute(f"INSERT INTO model_runs ({names}) VALUES ({marks})",
                                   row).lastrowid)

    def stop_orphaned_model_runs(self) -> list[int]:
        """Mark ``stopped`` every ``running`` model run whose process is gone (its owner token,
        :func:`obsviz.owner.token_alive`; a row from before owners were kept counts as gone),
        keeping what it finished; returns their ids. Call it at start-up."""
        return self._stop_orphaned("model_runs", "run")

    def stop_orphaned_scans(self) -> list[int]:
        """:meth:`stop_orphaned_model_runs` for sensitivity scans: a ``running`` scan whose
        process is gone is marked ``stopped``, keeping the layers it scanned; returns their
        ids."""
        return self._stop_orphaned("sensitivity_scans", "scan")

    def _stop_orphaned(self, table: str, what: str) -> list[int]:
        with self._connect() as con:
            rows = con.execute(f"SELECT id, owner FROM {table} WHERE status = 'running'")
            gone = [int(r["id"]) for r in rows if token_alive(r["owner"]) is False]
        if gone and not self.readonly:   # read-only: shown as they are
            now = datetime.now(UTC).isoformat(timespec="microseconds")
            with self._write() as con:
                con.executemany(
                    f"UPDATE {table} SET status = 'stopped', updated = ?, error = ? "
                    "WHERE id = ? AND status = 'running'",
                    [(now, f"its process ended before the {what} finished", i) for i in gone])
        return gone

    def model_runs(self, *, limit: int | None = None) -> list[StoredModelRun]:
        """Whole-model runs, newest first, without their reports (``model_run`` reads one)."""
        cols = ", ".join(c for c in MODEL_COLUMNS if c != "report")
        sql = f"SELECT {cols} FROM model_runs ORDER BY id DESC"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ArgumentError("limit", f"limit={limit!r} must be a non-negative integer")
            sql += f" LIMIT {int(limit)}"
        with self._connect() as con:
            return [_row_to_model_run(r) for r in con.execute(sql)]

    def model_run(self, run_id: int) -> StoredModelRun:
        """The whole-model run with this id and its report, checked (``KeyError`` when there is
        none; :class:`StoreError` when its report is not one obsviz can show)."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM model_runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise KeyError(f"no model run with id {run_id} in {self.path}")
        return _row_to_model_run(row, _read_report(row["report"], run_id))

    def record_scan(self, scan: dict, *, status: str = "running", error: str | None = None,
                    scan_id: int | None = None) -> int:
        """Store a layer-sensitivity scan (:func:`obsviz.sensitivity.scan`, with its ``checks``)
        and return its row's id: a new row, or with ``scan_id`` that row updated (call it as
        layers finish and plans are checked). The scan is checked first (``check_scan``)."""
        from obsviz.model import plan_summary
        from obsviz.sensitivity import check_scan

        if status not in MODEL_STATUSES:
            raise ArgumentError("status", f"status={status!r} is unknown; valid: "
                                f"{', '.join(MODEL_STATUSES)}")
        check_scan(scan)
        try:
            text = json.dumps(scan, default=_json_default, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise ArgumentError("scan", f"scan cannot be written as JSON ({e})") from None
        obsviz_version, torch_version = _versions()
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        row = {"updated": now, "name": scan["model"]["name"], "kind": scan["model"]["kind"],
               "plan": plan_summary(scan["plan"]), "layers": len(scan["layers"]),
               "total": int(scan.get("total", len(scan["layers"]))),
               "checks": len(scan.get("checks", [])), "status": status,
               "error": None if error is None else str(error), "scan": text,
               "obsviz_version": obsviz_version, "torch_version": torch_version,
               "owner": process_token()}
        with self._write() as con:
            if scan_id is not None:
                sets = ", ".join(f"{k} = :{k}" for k in row)
                if con.execute(f"UPDATE sensitivity_scans SET {sets} WHERE id = :id",
                               {**row, "id": int(scan_id)}).rowcount:
                    return int(scan_id)
            row["created"] = now
            names, marks = ", ".join(row), ", ".join(f":{k}" for k in row)
            return int(con.execute(f"INSERT INTO sensitivity_scans ({names}) VALUES ({marks})",
                                   row).lastrowid)

    def scans(self, *, limit: int | None = None) -> list[StoredScan]:
        """Layer-sensitivity scans, newest first, without their data (``scan`` reads one)."""
        cols = ", ".join(c for c in SCAN_COLUMNS if c not in ("scan", "owner"))
        sql = f"SELECT {cols} FROM sensitivity_scans ORDER BY id DESC"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ArgumentError("limit", f"limit={limit!r} must be a non-negative integer")
            sql += f" LIMIT {int(limit)}"
        with self._connect() as con:
            return [StoredScan(**{k: r[k] for k in SCAN_COLUMNS if k not in ("scan", "owner")})
                    for r in con.execute(sql)]

    def scan(self, scan_id: int) -> StoredScan:
        """The scan with this id, checked (``KeyError`` when there is none; :class:`StoreError`
        when it is not one obsviz can show)."""
        from obsviz.sensitivity import check_scan

        with self._connect() as con:
            row = con.execute("SELECT * FROM sensitivity_scans WHERE id = ?",
                              (int(scan_id),)).fetchone()
        if row is None:
            raise KeyError(f"no sensitivity scan with id {scan_id} in {self.path}")
        text = row["scan"]
        if not isinstance(text, str) or len(text) > MAX_REPORT_BYTES:
            raise StoreError(f"scan {scan_id}: not text, or over {MAX_REPORT_BYTES} characters")
        try:
            data = check_scan(json.loads(text))
        except (ValueError, RecursionError) as e:
            raise StoreError(f"scan {scan_id}: not a sensitivity scan ({str(e)[:300]})") from None
        return StoredScan(**{k: row[k] for k in SCAN_COLUMNS if k not in ("scan", "owner")},
                          scan=data)

    # -- reading

    def runs(self, *, limit: int | None = None, **where) -> list[StoredRun]:
        """Runs newest first, filtered by column: ``runs(layer="layer0.query", method=[...])``;
        a list/tuple/set value matches any of its items, ``None`` matches NULL. ``sweep=``
        matches every run filed under that sweep (``None``: runs of no sweep), once per layer
        name the sweep asked for it by: ``layer`` is that name (and ``layer=`` filters on it),
        ``extra["stored_layer"]`` the name it was stored with when that differs (a layer of
        the same contents as another)."""
        in_sweep = where.get("sweep") is not None
        clauses, params = [], []
        for col, value in where.items():
            if col not in FILTERS:
                raise ArgumentError(col, f"{col}= is not a filter; valid: {', '.join(FILTERS)}")
            target = ("s.sweep {}" if col == "sweep" else
                      "s.layer {}" if col == "layer" and in_sweep else f"runs.{col} {{}}")
            if isinstance(value, list | tuple | set | frozenset):
                items = list(value)
                if not items:
                    return []
                clauses.append(target.format(f"IN ({', '.join('?' * len(items))})"))
                params.extend(items)
            elif value is None:
                clauses.append("runs.id NOT IN (SELECT run_id FROM sweep_runs)" if col == "sweep"
                               else f"runs.{col} IS NULL")
            else:
                clauses.append(target.format("= ?"))
                params.append(value)
        sql = ("SELECT DISTINCT runs.*, s.layer AS asked_layer FROM runs JOIN sweep_runs s ON "
               "s.run_id = runs.id" if in_sweep else "SELECT * FROM runs")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY runs.id DESC" + (", s.layer" if in_sweep else "")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ArgumentError("limit", f"limit={limit!r} must be a non-negative integer")
            sql += f" LIMIT {int(limit)}"
        with self._connect() as con:
            return [_row_to_run(r) for r in con.execute(sql, params)]

    def get(self, run_id: int) -> StoredRun:
        """The run with this id; ``KeyError`` when there is none."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise KeyError(f"no run with id {run_id} in {self.path}")
        return _row_to_run(row)

    def find(self, key: str) -> StoredRun | None:
        """The finished run with this trial key, or ``None`` (resume asks this)."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE key = ? AND status = 'done'",
                              (key,)).fetchone()
        return None if row is None else _row_to_run(row)

    def layer_names(self, run_ids: list[int]) -> dict[int, list[str]]:
        """Every name each run was asked for by: the one it was stored with first, then those
        of layers of the same contents that shared it (the app's, ``run_layers``, and the
        sweeps', ``sweep_runs.layer``), in that order, each once."""
        ids = [int(i) for i in run_ids]
        out: dict[int, list[str]] = {}
        with self._connect() as con:
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                marks = ", ".join("?" * len(part))
                rows = con.execute(
                    f"SELECT id, layer, 0 AS o FROM runs WHERE id IN ({marks}) UNION ALL "
                    f"SELECT run_id, layer, 1 FROM run_layers WHERE run_id IN ({marks}) "
                    f"UNION ALL SELECT run_id, layer, 2 FROM sweep_runs WHERE run_id IN "
                    f"({marks}) ORDER BY 3, 2", part * 3)
                for r in rows:
                    names = out.setdefault(int(r[0]), [])
                    if r[1] not in names:
                        names.append(r[1])
        return out

    def done_keys(self, keys: list[str] | None = None) -> set[str]:
        """Keys of finished runs (of those in ``keys`` when given)."""
        with self._connect() as con:
            if keys is None:
                rows = con.execute("SELECT key FROM runs WHERE status = 'done' AND key IS NOT NULL")
                return {r[0] for r in rows}
            out: set[str] = set()
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                rows = con.execute(f"SELECT key FROM runs WHERE status = 'done' AND key IN "
                                   f"({', '.join('?' * len(part))})", part)
                out.update(r[0] for r in rows)
            return out

    def sweeps(self) -> list[dict]:
        """Every sweep name with its counts, newest first: ``{"sweep", "runs", "done",
        "failed", "first", "last"}``."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT s.sweep AS sweep, count(*) AS runs, sum(r.status = 'done') AS done, "
                "sum(r.status = 'failed') AS failed, min(r.time) AS first, max(r.time) AS last, "
                "max(r.id) AS newest FROM sweep_runs s JOIN runs r ON r.id = s.run_id "
                "GROUP BY s.sweep ORDER BY newest DESC").fetchall()
        return [{k: r[k] for k in ("sweep", "runs", "done", "failed", "first", "last")}
                for r in rows]

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])

    def tensors(self, run_id: int) -> dict[str, torch.Tensor]:
        """``{"weight": (M, K), "mask": (M, K) bool}`` of a finished run, each file checked
        against its digest first (:class:`StoredTensorsError` when one is missing or is not
        what was stored)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        run = self.get(run_id)
        if run.status != "done" or not run.weight_file or not run.mask_file:
            raise StoreError(f"run {run_id} has no stored tensors (status {run.status!r})")
        out = {}
        for name, fname in (("weight", run.weight_file), ("mask", run.mask_file)):
            data = self._read_tensor_file(fname)
            try:
                loaded = load(data)
            except (SafetensorError, ValueError, RuntimeError) as e:  # stored so, not changed
                raise StoredTensorsError(f"{TENSORS_GONE}: {fname} is not a tensor file "
                                         f"({e})") from None
            if name not in loaded:
                raise StoredTensorsError(f"{TENSORS_GONE}: {fname} holds no {name!r} tensor")
            out[name] = loaded[name]
        if tuple(out["weight"].shape) != run.shape or tuple(out["mask"].shape) != run.shape:
            raise StoredTensorsError(f"{TENSORS_GONE}: its tensors do not have the row's shape "
                                     f"{run.shape}")
        return out
