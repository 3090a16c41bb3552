"""`curate ingest --workers 2` (Ray, one task per file) gives the store a one-process ingest gives."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.cli import app
from tests.fixtures.inputs import subset_json

pytestmark = pytest.mark.usefixtures("prefect_quiet_after_module")

#: Columns that differ between two runs whatever they do: the run's id and its clock.
RUN_COLUMNS = ("ingest_run", "started_at", "finished_at", "computed_at", "created_at")


def _landing(shared_data: Path, folder: Path) -> list[str]:
    """Real inputs of the three kinds, in the order given to ingest: two DPO files sharing 60 rows
    (cross-file exact duplicates), an Alpaca file and its byte copy under another name (every record a
    duplicate of an earlier file of the run), HH pairs (gz), OASST trees, and a truncated .gz (not
    ingested, reported by name)."""
    folder.mkdir()
    llama = shared_data / "llama-factory"
    subset_json(llama / "dpo_en_demo.json", folder / "a_dpo.json", 0, 160)
    subset_json(llama / "dpo_en_demo.json", folder / "b_dpo.json", 100, 260)
    subset_json(llama / "alpaca_en_demo.json", folder / "c_alpaca.json", 0, 300)
    (folder / "d_alpaca_copy.json").write_bytes((folder / "c_alpaca.json").read_bytes())
    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        hh = [next(fh) for _ in range(600)]
    with gzip.open(folder / "e_hh.jsonl.gz", "wt") as fh:
        fh.writelines(hh)
    with (shared_data / "oasst" / "en_100_tree.jsonl").open() as fh:
        (folder / "f_oasst.jsonl").write_text("".join(next(fh) for _ in range(15)))
    whole = gzip.compress("".join(hh[:50]).encode())
    (folder / "g_truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    return [str(p) for p in sorted(folder.iterdir())]


def _snapshot(root: Path) -> dict[str, list[dict]]:
    """Every Parquet file of the store (units, near-duplicate marks), rows in order, minus run ids/times."""
    out = {}
    for f in sorted(root.rglob("*.parquet")):
        rel = f.relative_to(root)
        if rel.parts[0].startswith("."):
            continue
        table = pq.read_table(f)
        table = table.drop_columns([c for c in RUN_COLUMNS if c in table.column_names])
        out[str(rel)] = table.to_pylist()
    return out


@pytest.mark.slow  # starts a local Ray instance of 2 workers (~30-60 s on 2 cores)
def test_workers_2_gives_the_store_of_one_process(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    )
    files = _landing(shared_data, tmp_path / "landing")
    runner = CliRunner()
    outputs, stores = {}, {}
    for mode, extra in (("serial", []), ("ray", ["--workers", "2"])):
        store = tmp_path / mode
        # a unit committed before the run: the workers see it, their duplicates of it stay duplicates
        first = runner.invoke(app, ["ingest", files[0], "--store", str(store)])
        assert first.exit_code == 0, first.output
        res = runner.invoke(app, ["ingest", *files, "--store", str(store), *extra])
        outputs[mode], stores[mode] = res, store
        assert res.exit_code == 1, res.output  # the truncated file, named, the others committed
        assert "g_truncated.jsonl.gz" in res.output and "1 of 7 file(s) not ingested" in " ".join(
            res.output.split()
        )
    serial, ray = _snapshot(stores["serial"]), _snapshot(stores["ray"])
    units = sorted(p.name for p in (stores["serial"] / "ingest").iterdir())
    assert units == sorted(p.name for p in (stores["ray"] / "ingest").iterdir())
    assert len(units) == 6  # a_dpo (before the run) ... f_oasst; not the truncated file
    assert serial.keys() == ray.keys()
    for name in serial:
        assert serial[name] == ray[name], name
    # the case the driver's commit-time check exists for: duplicates of an earlier file of the same run
    runs = {r["source"]: r for f, rows in serial.items() if f.endswith("run.parquet") for r in rows}
    assert runs["b_dpo"]["duplicates"] >= 60 and runs["d_alpaca_copy"]["accepted"] == 0
    assert runs["d_alpaca_copy"]["duplicates"] >= runs["c_alpaca"]["accepted"] > 250
    assert not any((stores["ray"] / ".staging").glob("*"))
    # the same accounting table printed (the note column says "already ingested" for a_dpo in both)
    table = [line for line in outputs["serial"].output.splitlines() if "│" in line]
    assert table == [line for line in outputs["ray"].output.splitlines() if "│" in line]


def test_workers_without_ray_is_one_line_naming_the_extra(tmp_path, demo_data):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from curation.cli import app\n"
        f"app(['ingest', {str(demo_data / 'openai-cookbook')!r}, '--store', {str(tmp_path / 's')!r}, "
        "'--workers', '2'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "needs Ray" in lines[0] and "pip install 'curate[ray]'" in lines[0]
    assert not (tmp_path / "s").exists()  # refused before the store is made


@pytest.mark.slow  # a Prefect test server and a local Ray instance (~40 s on 2 cores)
def test_ingest_flow_with_workers_matches_the_serial_flow(prefect_api, shared_data, tmp_path, monkeypatch):  # noqa: F811
    from flows.pipeline import IngestFailed, ingest_flow

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    )
    landing = tmp_path / "landing"
    landing.mkdir()
    llama = shared_data / "llama-factory"
    subset_json(llama / "dpo_en_demo.json", landing / "a_dpo.json", 0, 80)
    subset_json(llama / "dpo_en_demo.json", landing / "b_dpo.json", 50, 120)
    subset_json(llama / "alpaca_en_demo.json", landing / "c_alpaca.json", 0, 100)
    (landing / "d_broken.json").write_text('[{"instruction": "x", ')
    out = {}
    for mode, kwargs in (("serial", {}), ("ray", {"workers": 2})):
        with pytest.raises(IngestFailed, match="d_broken.json"):  # named; the others are ingested
            ingest_flow(str(tmp_path / mode), [str(landing)], **kwargs)
        out[mode] = _snapshot(tmp_path / mode)
    assert out["serial"] == out["ray"]
    runs = {r["source"]: r for f, rows in out["ray"].items() if f.endswith("run.parquet") for r in rows}
    assert sorted(runs) == ["a_dpo", "b_dpo", "c_alpaca"] and runs["b_dpo"]["duplicates"] >= 30


def test_a_killed_parallel_run_leaves_only_staging_which_the_rerun_clears(shared_data, tmp_path):
    """A worker's staged unit is never read as committed; the next writer clears it and ingests the file."""
    from curation.core.store import Store
    from curation.ingest.parallel import stage_file
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    src = tmp_path / "alpaca.json"
    subset_json(shared_data / "llama-factory" / "alpaca_en_demo.json", src, 0, 50)
    store = Store(tmp_path / "store")
    with store.writer_lock("ingest"):  # as the driver holds it; then "killed" before committing
        st = stage_file(str(store.root), str(src), IngestOptions(), "run-1")
    assert st.error is None and st.staged and (Path(st.staged) / "sft.parquet").exists()
    assert Path(st.staged).parent == store.staging
    assert (
        store.files("ingest/*/sft.parquet") == []
        and store.query("SELECT count(*) AS n FROM sft")["n"][0].as_py() == 0
    )
    [res] = ingest_paths(store, [str(src)])
    assert not res.skipped and res.accepted == 50 and res.unit == st.res.unit
    assert not Path(st.staged).exists()


def test_a_store_error_at_commit_names_what_was_kept_and_leaves_no_staging(
    shared_data, tmp_path, monkeypatch
):
    import errno

    from curation.core.errors import StoreError
    from curation.core.store import Store
    from curation.ingest.columnar import IdSet
    from curation.ingest.parallel import _commit_staged, stage_file
    from curation.ingest.pipeline import IngestOptions

    files = []
    for name, start in (("a.json", 0), ("b.json", 40)):
        files.append(tmp_path / name)
        subset_json(shared_data / "llama-factory" / "alpaca_en_demo.json", files[-1], start, start + 60)
    store, opts = Store(tmp_path / "store"), IngestOptions()
    results, run_ids = [], {}
    with store.writer_lock("ingest"):
        staged = [stage_file(str(store.root), str(f), opts, "run-1") for f in files]
        results.append(_commit_staged(store, files[0], opts, staged[0], results, run_ids))
        assert isinstance(run_ids["sft"], IdSet) and len(run_ids["sft"]) == results[0].accepted

        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Store, "commit_dir", full)
        with pytest.raises(StoreError, match=r"disk full while committing .*b\.json.*a\.json"):
            _commit_staged(store, files[1], opts, staged[1], results, run_ids)
    assert not Path(staged[1].staged).exists()
    assert [p.name for p in (store.root / "ingest").iterdir()] == [results[0].unit]


def test_a_worker_that_dies_is_a_one_line_store_error_naming_the_file(tmp_path):
    from curation.core.errors import StoreError
    from curation.ingest.parallel import _collect

    class DeadWorker:
        def get(self, ref):
            raise RuntimeError("The worker died unexpectedly while executing this task.\n  Traceback ...")

    st = _collect(DeadWorker(), object(), tmp_path / "big.jsonl")
    assert isinstance(st.error, StoreError) and st.res is None and st.staged is None
    assert str(st.error) == (
        f"the Ray worker ingesting {tmp_path / 'big.jsonl'} failed: "
        "The worker died unexpectedly while executing this task."
    )
