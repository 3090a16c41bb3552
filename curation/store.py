"""The store: one folder of Parquet files plus a DuckDB catalog of views.

Layout (every name below is created by the code in this package)::

    <root>/
      ingest/<unit>/            one committed unit per (input file, reader, options)
          sft.parquet | pair.parquet | ranking.parquet
          quarantine.parquet    rows that failed, with file, row, field, reason, raw text
          duplicates.parquet    rows whose content id already existed
          run.parquet           the accounting row of that unit (ingest_runs view)
      dedup/near_<kind>.parquet near-duplicate prompt clusters (recomputed after ingest)
      scores/<scorer>/...       score tables (see curation.scoring)
      curated/<name>/           shards + manifest.json (see curation.build)
      catalog.duckdb            views over the Parquet files, for ad-hoc SQL
      .staging/                 work in progress; never read by any view
      .lock                     the writer lock (holds the writer's PID)

Atomicity: a unit is written into ``.staging`` and renamed into ``ingest/``
in one ``rename(2)``, so a killed run never leaves a unit that looks complete;
single files are written to a temporary name and renamed. Readers never take
the DuckDB file lock: ``Store.connect()`` opens an in-memory DuckDB with the
same views, so `curate sql` works while a writer runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import DUPLICATE_SCHEMA, INGEST_RUN_SCHEMA, QUARANTINE_SCHEMA, SCHEMAS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")

#: view name -> (glob relative to the store root, schema used when no file exists yet)
BASE_VIEWS: dict[str, tuple[str, pa.Schema]] = {
    "sft": ("ingest/*/sft.parquet", SCHEMAS["sft"]),
    "pairs": ("ingest/*/pair.parquet", SCHEMAS["pair"]),
    "rankings": ("ingest/*/ranking.parquet", SCHEMAS["ranking"]),
    "quarantine": ("ingest/*/quarantine.parquet", QUARANTINE_SCHEMA),
    "duplicates": ("ingest/*/duplicates.parquet", DUPLICATE_SCHEMA),
    "ingest_runs": ("ingest/*/run.parquet", INGEST_RUN_SCHEMA),
}
KIND_VIEW = {"sft": "sft", "pair": "pairs", "ranking": "rankings"}


class StoreError(RuntimeError):
    """A store operation failed in a way the user can act on."""


class StoreLocked(StoreError):
    """Another process holds the writer lock."""


def safe_name(name: str, what: str = "name") -> str:
    """Validate a store-relative name (dataset, shard, build): no separators, no '..'."""
    if not _NAME.match(name) or ".." in name:
        raise StoreError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_', '-' or '=' "
            "(no path separators, no '..', at most 200 characters)"
        )
    return name


class Store:
    """A curated-data store rooted at one folder."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create store folder {self.root}: {exc.strerror}") from exc
        elif not self.root.is_dir():
            raise StoreError(f"no store at {self.root} (run `curate ingest` first)")

    # ----------------------------------------------------------------- paths
    def path(self, *parts: str) -> Path:
        """Join names under the root; refuse anything that would leave the store (.., /abs, symlinks out)."""
        for p in parts:
            pieces = Path(p).parts if p else ("",)
            if Path(p).is_absolute():
                raise StoreError(f"{p!r}: absolute paths are not allowed inside the store")
            for piece in pieces:
                safe_name(piece, "path component")
        full = self.root.joinpath(*parts)
        real_root = self.root.resolve()
        real = full.resolve()
        if real != real_root and real_root not in real.parents:
            raise StoreError(f"{'/'.join(parts)!r} resolves to {real}, outside the store {real_root}")
        return full

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def writer_lock(self, purpose: str = "write") -> Iterator[None]:
        """Hold the store's writer lock; fail at once with the holder's PID if taken.

        The lock is an advisory ``flock`` on ``.lock``: it is released by the
        kernel when the holder dies, so a SIGKILLed writer never leaves a stale lock.
        A store that cannot be written (read-only, full, not ours) fails here, in one line.
        """
        lock_path = self.root / ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise io_error(exc, f"taking the writer lock {lock_path}", "nothing was written") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise StoreLocked(
                    f"store {self.root} is locked by PID {holder}; "
                    "another curate command is writing to it. Wait for it to finish, or stop it."
                ) from None
            with contextlib.suppress(
                OSError
            ):  # only tells a second writer who holds it; a full disk refuses it
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} ({purpose})".encode(), 0)
            self._clean_staging()
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def _clean_staging(self) -> None:
        """Remove leftovers of killed writers (only ever called under the lock)."""
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    # --------------------------------------------------------------- writing
    def new_staging_dir(self) -> Path:
        d = self.staging / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d

    def commit_dir(self, staged: Path, rel: str) -> Path:
        """Atomically move a staged folder to ``rel`` (which must not exist yet)."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync_tree(staged)
        try:
            os.rename(staged, target)
        except OSError as exc:
            raise StoreError(f"cannot commit {rel}: {exc.strerror}") from exc
        _fsync_dir(target.parent)
        return target

    def write_parquet(self, table: pa.Table, rel: str, **kwargs) -> Path:
        """Write one Parquet file atomically (temporary name in the same folder, then rename)."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, target, **kwargs)
        return target

    # --------------------------------------------------------------- reading
    def files(self, glob: str) -> list[Path]:
        return sorted(p for p in self.root.glob(glob) if ".staging" not in p.parts)

    def view_sql(self) -> dict[str, str]:
        """SQL for every view: base kinds plus whatever score/curation tables exist."""
        from curation import views  # local import: views depend on scorer modules

        return views.all_views(self)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with every view defined; never locks the store."""
        con = duckdb.connect(":memory:")
        for name, sql in self.view_sql().items():
            con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')
        return con

    def read(self, view: str) -> pa.Table:
        """A whole view as an Arrow table."""
        with contextlib.closing(self.connect()) as con:
            return con.sql(f'SELECT * FROM "{view}"').to_arrow_table()

    def refresh_catalog(self) -> Path:
        """Rewrite catalog.duckdb (atomically) with views over the current files.

        The file is for users who open the store with the duckdb CLI or a BI tool;
        the project itself reads through ``connect()``.
        """
        target = self.root / "catalog.duckdb"
        tmp = self.root / f".catalog-{uuid.uuid4().hex}.duckdb"
        try:
            con = duckdb.connect(str(tmp))
            try:
                for name, sql in self.view_sql().items():
                    con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')
            finally:
                con.close()
            os.replace(tmp, target)
        finally:
            for leftover in (tmp, tmp.with_suffix(".duckdb.wal")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        return target


def empty_select(schema: pa.Schema) -> str:
    """A SQL SELECT with the columns of ``schema`` and no rows (for views over no files yet).

    The column types are DuckDB's own mapping of the Arrow schema, asked of one shared in-memory
    connection: a connection for each cost 30-70 ms, up to half a second per catalog refresh."""
    global _TYPES_CON
    with _TYPES_LOCK:
        if _TYPES_CON is None or _TYPES_CON[0] != os.getpid():  # never a connection from before a fork
            _TYPES_CON = (os.getpid(), duckdb.connect(":memory:"))
        rel = _TYPES_CON[1].from_arrow(schema.empty_table())
        cols = list(zip(rel.columns, (str(t) for t in rel.types), strict=True))
    body = ", ".join(f'CAST(NULL AS {ctype}) AS "{name}"' for name, ctype in cols)
    return f"SELECT {body} WHERE false"


_TYPES_CON: tuple[int, duckdb.DuckDBPyConnection] | None = None  # (pid, connection)
_TYPES_LOCK = threading.Lock()


def parquet_select(root: Path, glob: str, schema: pa.Schema) -> str:
    files = [p for p in root.glob(glob) if ".staging" not in p.parts]
    if not files:
        return empty_select(schema)
    pattern = str(root / glob).replace("'", "''")
    return f"SELECT * FROM read_parquet('{pattern}', union_by_name = true)"


def write_parquet_atomic(table: pa.Table, target: Path, **kwargs) -> None:
    """Write ``table`` to ``target`` via a temporary sibling and ``os.replace``."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    kwargs.setdefault("compression", "zstd")
    try:
        pq.write_table(table, tmp, **kwargs)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise io_error(exc, f"writing {target}") from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def io_error(
    exc: OSError, doing: str, done: str = "nothing was committed, the store is unchanged"
) -> StoreError:
    """A StoreError in one line: what failed, what was left (``done``) and what the user can do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"disk full while {doing}; {done}. Free some space and run the command again: it resumes."
        )
    if exc.errno == errno.EROFS:
        return StoreError(
            f"read-only file system while {doing}; {done}. "
            "Use a writable store folder (--store) or remount it read-write, and run the command again."
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(f"permission denied {doing}: {exc.strerror}; {done}.")
    return StoreError(f"I/O error {doing}: {exc.strerror or exc}; {done}.")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)
