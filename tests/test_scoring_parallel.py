"""`score --workers 2` on a local Ray instance gives the tables of `--workers 1` (real HH-RLHF, GSM8K, Alpaca);
a killed worker loses at most the chunks in flight; no Ray gives one line naming the extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from curation.scoring import run_scorer
from tests.fixtures.scoring import save_reward_model
from tests.fixtures.stores import build_store

REPO = Path(__file__).resolve().parents[1]
FAST = {"progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs) for the module; the scorers join it instead of starting their own."""
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, shared_data):
    """A store with 160 real HH-RLHF pairs and 120 SFT rows (80 GSM8K, 40 Alpaca), never scored."""
    return build_store(tmp_path_factory.mktemp("par"), shared_data, hh=160, alpaca=40, gsm8k=80)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, minilm):
    return save_reward_model(minilm, tmp_path_factory.mktemp("rm") / "rm", seed=0)


def fresh(base_store, tmp_path, name):
    from curation.core.store import Store

    shutil.copytree(base_store.root, tmp_path / name)
    return Store(tmp_path / name)


def cache_table(st, name: str) -> pa.Table:
    """Every committed value of the per-record cache ``name`` (one key), sorted by id; none left staged."""
    import pyarrow.parquet as pq

    (key_dir,) = (st.root / "scores" / "cache" / name).iterdir()
    assert not list(key_dir.glob("incoming/*.parquet"))
    files = sorted(key_dir.glob("chunk-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("id")


def result_table(st, scorer: str) -> pa.Table:
    from curation.scoring.cache import active_table

    return active_table(st, scorer).sort_by("id")


CASES = {
    "embeddings": ({"chunk_size": 64, "kinds": ["pair"]}, "embeddings", None),
    "length_bias": ({"chunk_size": 32}, "token_lengths", "length_bias"),
    "reward_margin": ({"chunk_size": 32, "max_length": 96}, "rewards", "reward_margin"),
    "uncertainty": ({"chunk_size": 32}, "embeddings", "uncertainty"),
}


@pytest.mark.slow  # a local Ray instance with two workers, four scorers (~60-80 s on 2 cores)
@pytest.mark.parametrize("scorer", list(CASES))
def test_two_workers_give_the_tables_of_one(ray_local, base_store, rm_dir, tmp_path, scorer):
    params, cache, result = CASES[scorer]
    params = params | ({"progress": False} if scorer == "length_bias" else FAST)
    if scorer == "reward_margin":
        params |= {"models": [str(rm_dir)]}
    tables = {}
    for n in (1, 2):
        st = fresh(base_store, tmp_path, f"w{n}")
        summary = run_scorer(st, scorer, workers=n, **params)
        assert summary.computed > 0 and summary.cached == 0
        tables[n] = (cache_table(st, cache), result_table(st, result) if result else None)
    one, two = tables[1], tables[2]
    assert one[0].num_rows > 60
    assert two[0].equals(one[0])  # bitwise: fp32 on CPU, same chunks, same batches
    if result:
        assert two[1].equals(one[1])
        assert two[1].num_rows == one[1].num_rows > 0


@pytest.mark.slow
def test_killed_worker_loses_only_the_chunks_in_flight(ray_local, base_store, rm_dir, tmp_path, monkeypatch):
    from curation.scoring.parallel import KILL_WORKER_ENV, ParallelError

    chunk, workers = 32, 2
    params = {"chunk_size": chunk, "max_length": 96, "models": [str(rm_dir)]} | FAST
    ref = fresh(base_store, tmp_path, "ref")
    total = run_scorer(ref, "reward_margin", **params).computed

    st = fresh(base_store, tmp_path, "killed")
    monkeypatch.setenv(KILL_WORKER_ENV, "0")  # the first worker dies as it starts its first chunk (with "1",
    # its second, which it may never get when the other worker takes every chunk left: a race)
    with pytest.raises(ParallelError, match="Run the command again"):
        run_scorer(st, "reward_margin", workers=workers, **params)
    monkeypatch.delenv(KILL_WORKER_ENV)
    done = cache_table(st, "rewards").num_rows
    assert chunk <= done < total  # the other worker computed and committed the rest
    rerun = run_scorer(st, "reward_margin", workers=workers, **params)
    assert rerun.cached == done and rerun.computed == total - done
    assert 0 < rerun.computed <= chunk  # all that was lost: the dead worker's chunk in flight
    assert cache_table(st, "rewards").equals(cache_table(ref, "rewards"))
    assert result_table(st, "reward_margin").equals(result_table(ref, "reward_margin"))


@pytest.mark.slow  # a Prefect test server beside the module's Ray instance (~30 s on 2 cores)
@pytest.mark.usefixtures("prefect_quiet_after_module")
def test_score_flow_on_two_workers_resumes_a_killed_worker_and_matches_one_process(
    prefect_api, ray_local, base_store, tmp_path, monkeypatch
):
    """The Prefect score flow takes `workers`, as `curate score --workers` does: a worker killed mid-run
    (the hook only a Ray worker reads) fails the flow with the rerun hint; the rerun computes only what
    was lost, and the tables equal those of the one-process flow."""
    from curation.scoring.parallel import KILL_WORKER_ENV
    from flows.pipeline import score_flow

    chunk = 32
    scorers = {"length_bias": {"chunk_size": chunk, "progress": False}}
    one = fresh(base_store, tmp_path, "flow1")
    serial = score_flow(str(one.root), scorers)["scorers"]["length_bias"]["result"]
    two = fresh(base_store, tmp_path, "flow2")
    monkeypatch.setenv(KILL_WORKER_ENV, "0")  # the first worker dies as it starts its first chunk (no race)
    with pytest.raises(Exception, match="Run the command again"):
        score_flow(str(two.root), scorers, workers=2)
    monkeypatch.delenv(KILL_WORKER_ENV)
    done = cache_table(two, "token_lengths").num_rows
    assert done == serial["computed"] - chunk  # the other worker committed every other chunk
    out = score_flow(str(two.root), scorers, workers=2)
    rerun = out["scorers"]["length_bias"]["result"]
    assert [s["state"] for s in out["steps"]] == ["Completed"]
    assert rerun["cached"] == done and rerun["computed"] == chunk  # only the chunk in flight
    assert cache_table(two, "token_lengths").equals(cache_table(one, "token_lengths"))
    assert result_table(two, "length_bias").equals(result_table(one, "length_bias"))


def test_staged_parts_of_a_killed_driver_are_committed_not_recomputed(base_store, tmp_path):
    """A part a worker staged (atomically) before the driver died is committed by the next run."""
    from curation.core.store import write_parquet_atomic
    from curation.scoring.cache import CacheSpec, cache_dir, cached_compute

    st = fresh(base_store, tmp_path, "staged")
    spec = CacheSpec("demo", "1", "fp")
    ids = [f"id{i:03d}" for i in range(10)]
    schema = pa.schema([("id", pa.string()), ("v", pa.int64())])
    part = cache_dir(st, spec) / "incoming" / "part-x.parquet"
    part.parent.mkdir(parents=True)
    write_parquet_atomic(pa.table({"id": ids[:4], "v": [0, 10, 20, 30]}), part)
    calls = []

    def compute(pos):
        calls.extend(pos.tolist())
        return pa.table({"v": [int(p) * 10 for p in pos]})

    table, stats = cached_compute(st, spec, ids, compute, schema=schema, progress=False, chunk_size=3)
    assert stats.cached == 4 and stats.computed == 6 and sorted(calls) == list(range(4, 10))
    assert table.column("v").to_pylist() == [i * 10 for i in range(10)]
    assert not part.exists()


def test_workers_without_ray_is_one_clear_line(base_store, tmp_path):
    st = fresh(base_store, tmp_path, "noray")
    code = (
        "import sys, runpy; sys.modules['ray'] = None; "
        f"sys.argv = ['curate', 'score', 'embeddings', '--workers', '2', '--store', {str(st.root)!r}]; "
        "runpy.run_module('curation.cli', run_name='__main__')"
    )
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert lines == ["error: --workers needs Ray: pip install 'curate[ray]'"]
    assert not (st.root / "scores" / "cache" / "embeddings").exists()  # nothing was computed
