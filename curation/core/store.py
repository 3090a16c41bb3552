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
      curated/<name>/           shards + manifest.json (see curation.builds.build)
      catalog.duckdb            views over the Parquet files, for ad-hoc SQL
      .staging/                 work in progress; never read by any view
      .sql-tmp/                 DuckDB's spill files, one folder per open connection (see curation.core.sql)
      .lock                     the writer lock (holds the writer's PID)

Atomicity: a unit is written into ``.staging`` and renamed into ``ingest/``
in one ``rename(2)``, so a killed run never leaves a unit that looks complete;
single files are written to a temporary name and renamed. Readers never take
the DuckDB file lock: ``Store.connect()`` opens an in-memory DuckDB with the
same views, so `curate sql` works while a writer runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curation.core import sql as sql_sandbox
from curation.core.errors import StoreError, StoreLocked, io_error
from curation.core.names import check_root, safe_name, sql_files
from schemas import DUPLICATE_SCHEMA, INGEST_RUN_SCHEMA, QUARANTINE_SCHEMA, SCHEMAS

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


class Store:
    """A curated-data store rooted at one folder."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True) -> None:
        try:
            self.root = Path(root).expanduser().absolute()
            check_root(self.root)
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            elif not self.root.is_dir():
                raise StoreError(f"no store at {self.root} (run `curate ingest` first)")
        except OSError as exc:
            doing = "create" if create else "open"
            raise StoreError(f"cannot {doing} store folder {os.fspath(root)}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # a NUL byte in the path
            raise StoreError(f"invalid store folder {os.fspath(root)!r}: {exc}") from exc

    # ----------------------------------------------------------------- paths
    def path(self, *names: str) -> Path:
        """``root/names[0]/names[1]/...``, each argument one plain name (``safe_name``: "a/b", "." and ""
        are refused, never split); refused too if it resolves outside the store (a symlink out)."""
        for n in names:
            safe_name(n, "name")
        full = self.root.joinpath(*names)
        real_root = self.root.resolve()
        real = full.resolve()
        if real != real_root and real_root not in real.parents:
            raise StoreError(f"{'/'.join(names)!r} resolves to {real}, outside the store {real_root}")
        return full

    def rel_path(self, rel: str) -> Path:
        """``path`` of a '/'-joined relative path written by the code (``ingest/<unit>``); every part,
        empty and '.' ones included, is checked as one name."""
        return self.path(*rel.split("/"))

    def output_path(self, out: str | os.PathLike[str], folder: str = "reports") -> Path:
        """A file the user names for us to write (``curate report --out``). Outside the store it may be
        anywhere; inside it only ``<root>/<folder>/<one plain name>``, so no output can overwrite a unit,
        a shard, a manifest or the catalog."""
        path = Path(os.path.normpath(Path(out).expanduser().absolute()))
        real_root = self.root.resolve()
        # as written and as resolved (a symlink on the way may lead into the store, or out of it)
        both = ((path, self.root), (path.parent.resolve() / path.name, real_root))
        if not any(p == r or r in p.parents for p, r in both):
            if path.is_dir():
                raise StoreError(f"{os.fspath(out)!r} is a folder; give a file name")
            return path
        if all(p.parent == r / folder for p, r in both):
            return self.path(folder, path.name)
        raise StoreError(
            f"{os.fspath(out)!r} is inside the store {self.root}: write it outside the store, "
            f"or as {self.root / folder}/<name>"
        )

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
        """Remove leftovers of killed writers (only ever called under the lock). A link (or a file) where
        ``.staging`` or ``.replaced`` should be is never ours: it would send work in progress out of the
        store, or pull a folder from outside in as a parked build; it is removed."""
        for wip in (self.staging, self.root / ".replaced"):
            if wip.is_symlink() or (wip.exists() and not wip.is_dir()):
                wip.unlink()
        self.restore_replaced()
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    # --------------------------------------------------------------- writing
    def new_staging_dir(self) -> Path:
        d = self.staging / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d

    def commit_dir(self, staged: Path, rel: str) -> Path:
        """Atomically move a staged folder to ``rel`` (which must not exist yet)."""
        target = self.rel_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync_tree(staged)
        try:
            os.rename(staged, target)
        except OSError as exc:
            raise StoreError(f"cannot commit {rel}: {exc.strerror}") from exc
        _fsync_dir(target.parent)
        return target

    def replace_dir(self, staged: Path, *names: str) -> Path:
        """Move a staged folder to ``root/names...``, replacing the folder there so that readers, and
        a process killed at any instant, see the old folder or the new one, never neither.

        Linux swaps the two in one ``renameat2(RENAME_EXCHANGE)``; the old folder, now at ``staged``,
        is then deleted (a kill before that leaves it in ``.staging``, which the next writer clears).
        Where the file system cannot exchange (NFS, non-Linux), the old folder is parked under
        ``.replaced/`` for the moment between two renames, and the next writer puts it back if the
        new one never arrived (``restore_replaced``)."""
        target = self.path(*names)
        if not target.exists():
            return self.commit_dir(staged, "/".join(names))
        _fsync_tree(staged)
        if exchange_dirs(staged, target):
            _fsync_dir(target.parent)
            shutil.rmtree(staged, ignore_errors=True)
            return target
        parked = self.root / ".replaced" / Path(*names)
        parked.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(parked, ignore_errors=True)
        try:
            os.rename(target, parked)
        except OSError as exc:
            raise StoreError(f"cannot replace {'/'.join(names)}: {exc.strerror}") from exc
        try:
            os.rename(staged, target)
        except OSError as exc:
            os.rename(parked, target)
            raise StoreError(f"cannot commit {'/'.join(names)}: {exc.strerror}") from exc
        _fsync_dir(target.parent)
        shutil.rmtree(parked, ignore_errors=True)
        return target

    def restore_replaced(self) -> list[str]:
        """Put back every folder that ``replace_dir`` parked and whose replacement never arrived (the
        writer was killed between its two renames); drop the parked ones that were replaced. Only
        ever called under the writer lock. Returns what was restored."""
        parked_root = self.root / ".replaced"
        restored = []
        for parked in sorted(parked_root.glob("*/*")) if parked_root.is_dir() else []:
            target = self.root / parked.relative_to(parked_root)
            if target.exists():
                shutil.rmtree(parked, ignore_errors=True)
            else:
                os.rename(parked, target)
                restored.append(str(parked.relative_to(parked_root)))
        return restored

    def write_parquet(self, table: pa.Table, rel: str, **kwargs) -> Path:
        """Write one Parquet file atomically (temporary name in the same folder, then rename)."""
        target = self.rel_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, target, **kwargs)
        return target

    # --------------------------------------------------------------- reading
    def files(self, glob: str) -> list[Path]:
        """Committed files matching ``glob`` (relative to the root; the root itself is never a pattern)."""
        return store_files(self.root, glob)

    def base_views(self) -> dict[str, str]:
        """SQL of the base views (the canonical kinds and the ingest tables); the layers above add theirs,
        and ``curation.catalog`` composes them all."""
        return {name: parquet_select(self.root, glob, schema) for name, (glob, schema) in BASE_VIEWS.items()}

    def connect(self, views: Mapping[str, str] | None = None) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the base views and then ``views``, sandboxed to this store by
        ``curation.core.sql`` (no file outside it, no extensions, configuration locked); never locks the
        store. ``curation.catalog.connect(store)`` gives every view."""
        return sql_sandbox.connect(self.root, self.base_views() | dict(views or {}))

    def query(
        self,
        sql: str,
        views: Mapping[str, str] | None = None,
        what: str = "query",
        timeout: float | None = None,
    ) -> pa.Table:
        """One checked read-only statement (``curation.core.sql.query``) over the base views and ``views``,
        interrupted after ``timeout`` seconds. The statement is checked before the store is opened, so a
        refused one leaves no trace."""
        sql_sandbox.check_query(sql)
        with contextlib.closing(self.connect(views)) as con:
            return sql_sandbox.query(con, sql, what, timeout)

    def read(self, view: str, views: Mapping[str, str] | None = None) -> pa.Table:
        """A whole view as an Arrow table."""
        with contextlib.closing(self.connect(views)) as con:
            return con.sql(f'SELECT * FROM "{view}"').to_arrow_table()

    def write_catalog(self, views: Mapping[str, str]) -> Path:
        """Rewrite catalog.duckdb (atomically) with ``views`` (``curation.catalog.refresh`` passes every view).

        The file is for users who open the store with the duckdb CLI or a BI tool;
        the project itself reads through ``connect()``. Built on the same sandbox as ``connect()``.
        """
        target = self.root / "catalog.duckdb"
        tmp = self.root / f".catalog-{uuid.uuid4().hex}.duckdb"
        # DuckDB cannot open a database under a path with '?' (read as options) or '\\' (read as '/'):
        # there the file is made in a temporary folder and copied in.
        elsewhere = tempfile.mkdtemp(prefix="curate-catalog-") if re.search(r"[?\\]", str(tmp)) else None
        made = Path(elsewhere) / "catalog.duckdb" if elsewhere else tmp
        try:
            con = duckdb.connect(str(made))
            try:
                sql_sandbox.sandbox(con, self.root)
                for name, sql in views.items():
                    con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')
            finally:
                con.close()
            if elsewhere:
                shutil.copyfile(made, tmp)
            os.replace(tmp, target)
        finally:
            for leftover in (tmp, tmp.with_suffix(".duckdb.wal")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            if elsewhere:
                shutil.rmtree(elsewhere, ignore_errors=True)
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


def store_files(root: Path, glob: str) -> list[Path]:
    """Files under ``root`` matching ``glob`` (Python's glob: the root is taken literally), sorted; none
    in work in progress (``.staging``, ``.replaced``). A file that a symlink leads out of the store is
    an error naming it: never read, and never silently left out of a view either."""
    real_root = root.resolve()
    out = []
    for p in root.glob(glob):
        rel = p.relative_to(root).parts
        if rel[0] in (".staging", ".replaced") or not p.is_file():
            continue
        if real_root not in p.resolve().parents:
            raise StoreError(
                f"{p} links outside the store (to {p.resolve()}); curate reads no file outside the store "
                f"{root}: remove the link, or move the data into the store"
            )
        out.append(p)
    return sorted(out)


def parquet_select(root: Path, glob: str, schema: pa.Schema) -> str:
    """SELECT over the store's files matching ``glob``, listed here and named to DuckDB one by one
    (``sql_files``): a root such as ``a[1]`` or ``q?x`` is a path, never a pattern."""
    files = store_files(root, glob)
    if not files:
        return empty_select(schema)
    return f"SELECT * FROM read_parquet({sql_files(files)}, union_by_name = true)"


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


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` (2.28+), or None where the C library has none (non-Linux, musl < 1.2.4)."""
    func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
    return func


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``). False where
    the system or the file system cannot (the caller falls back); other errors raise ``StoreError``."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise StoreError(f"cannot replace {b}: {os.strerror(err)}")


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
