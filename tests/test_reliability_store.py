"""Reliability of the store itself: the writer lock, readers beside a writer, SIGKILL during ingest,
disk-full and permission errors, and names that try to escape the store folder."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.core.errors import StoreError, StoreLocked
from curation.core.names import safe_name
from curation.core.store import Store

REPO = Path(__file__).resolve().parents[1]
CURATE = [sys.executable, "-m", "curation.cli"]

HOLD_LOCK = """
import sys, time
from curation.core.store import Store
with Store(sys.argv[1]).writer_lock("test holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold_lock(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _ingest_cmd(root: Path, *paths: Path) -> list[str]:
    return [*CURATE, "ingest", *map(str, paths), "--store", str(root)]


def _snapshot(root: Path) -> dict[str, list]:
    """Everything a store holds, minus run ids and timestamps (which differ between any two runs)."""
    out = {}
    for name in ("pair", "sft", "ranking", "quarantine", "duplicates", "run"):
        rows = []
        for f in sorted(root.glob(f"ingest/*/{name}.parquet")):
            t = pq.read_table(f)
            drop = [c for c in ("ingest_run", "started_at", "finished_at") if c in t.column_names]
            rows += t.drop(drop).to_pylist()
        out[name] = sorted(rows, key=repr)
    out["units"] = sorted(p.name for p in root.glob("ingest/*"))
    return out


def test_second_writer_stops_at_once_naming_the_pid(tmp_path):
    root = tmp_path / "store"
    Store(root)
    holder = _hold_lock(root)
    try:
        with (
            pytest.raises(StoreLocked, match=rf"locked by PID {holder.pid}"),
            Store(root).writer_lock("second"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the lock with the dead holder: no stale lock.
    with Store(root).writer_lock("after"):
        pass


def test_cli_writer_on_locked_store_fails_clearly(tmp_path, demo_data):
    root = tmp_path / "store"
    Store(root)
    holder = _hold_lock(root)
    try:
        started = time.monotonic()
        res = subprocess.run(_ingest_cmd(root, demo_data / "oasst"), capture_output=True, text=True, cwd=REPO)
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode != 0
    assert f"locked by PID {holder.pid}" in res.stderr.replace("\n", " ")
    assert not list(root.glob("ingest/*"))


def test_readers_keep_working_while_a_writer_holds_the_store(tmp_path, demo_data):
    from curation.catalog import query, refresh
    from curation.ingest.pipeline import ingest_paths

    root = tmp_path / "store"
    store = Store(root)
    ingest_paths(store, [str(demo_data / "oasst")])
    refresh(store)  # what `curate ingest` does after the library call
    holder = _hold_lock(root)
    try:
        n = query(store, "SELECT count(*) AS n FROM rankings").column("n")[0].as_py()
        assert n == 212
        # catalog.duckdb is not held open by writers either: the duckdb file opens read-only.
        import duckdb

        con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
        assert con.sql("SELECT count(*) FROM ingest_runs").fetchall()[0][0] == 1
        con.close()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_sigkill_during_ingest_then_rerun_gives_the_same_store(tmp_path, demo_data):
    inputs = [
        demo_data / "hh-rlhf",
        demo_data / "llama-factory",
        demo_data / "gsm8k" / "example_model_solutions.jsonl",
        demo_data / "oasst",
        demo_data / "openai-cookbook",
    ]
    clean = tmp_path / "clean"
    subprocess.run(_ingest_cmd(clean, *inputs), check=True, capture_output=True, cwd=REPO)
    expected = _snapshot(clean)
    assert len(expected["pair"]) > 2000

    killed = tmp_path / "killed"
    rng = random.Random(20261129)
    for _ in range(3):
        proc = subprocess.Popen(
            _ingest_cmd(killed, *inputs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
        )
        time.sleep(rng.uniform(2.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Whatever is visible is complete: every committed unit has its accounting row and reconciles.
        for unit in killed.glob("ingest/*"):
            run = pq.read_table(unit / "run.parquet").to_pylist()[0]
            assert (
                run["records_out"]
                <= run["accepted"] + run["quarantined"] + run["duplicates"] + run["rows_read"]
            )
            assert not list(unit.glob(".*.tmp"))
    subprocess.run(_ingest_cmd(killed, *inputs), check=True, capture_output=True, cwd=REPO)
    assert _snapshot(killed) == expected
    assert not (killed / ".staging").exists() or not any((killed / ".staging").iterdir())


def test_disk_full_gives_a_clear_error_and_leaves_the_store_consistent(tmp_path, demo_data, monkeypatch):
    from curation.ingest.pipeline import ingest_paths

    store = Store(tmp_path / "store")
    ingest_paths(store, [str(demo_data / "oasst")])
    before = _snapshot(store.root)

    real_write = pq.ParquetWriter.write_table

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(StoreError, match="disk full"):
        ingest_paths(store, [str(demo_data / "hh-rlhf")])
    assert _snapshot(store.root) == before
    monkeypatch.setattr(pq.ParquetWriter, "write_table", real_write)
    ingest_paths(store, [str(demo_data / "hh-rlhf")])
    assert len(_snapshot(store.root)["pair"]) == 2308


def test_permission_error_names_the_path(tmp_path, monkeypatch):
    import pyarrow as pa

    from curation.core.store import write_parquet_atomic

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(pq, "write_table", denied)
    target = tmp_path / "x.parquet"
    with pytest.raises(StoreError, match=r"permission denied writing .*x\.parquet"):
        write_parquet_atomic(pa.table({"a": [1]}), target)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/../../b", "..", "", "x" * 300, "a\x00b"])
def test_names_cannot_escape_the_store(tmp_path, name):
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError):
        store.path("curated", name)
    with pytest.raises(StoreError):
        safe_name(name)


def test_symlink_out_of_the_store_is_refused(tmp_path):
    store = Store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "curated").mkdir()
    os.symlink(outside, store.root / "curated" / "evil")
    with pytest.raises(StoreError, match="outside the store"):
        store.path("curated", "evil")
