"""reward_margin on real HH-RLHF pairs: pretrained reward models (cache, kill/resume) and the cross-fitted ensemble."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curation import catalog
from curation.core.models import DEFAULT_ENCODER
from curation.scoring import run_scorer, versions
from curation.scoring.cache import ResultSpec, ids_fingerprint
from curation.scoring.embeddings import Embedder
from tests.fixtures.scoring import save_reward_model
from tests.fixtures.stores import build_store

REPO = Path(__file__).resolve().parents[1]
FAST = {"max_length": 96, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, minilm):
    return save_reward_model(minilm, tmp_path_factory.mktemp("rm") / "rm", seed=0)


@pytest.fixture(scope="module")
def rm2_dir(tmp_path_factory, minilm):
    return save_reward_model(minilm, tmp_path_factory.mktemp("rm2") / "rm", seed=1)


def scored(st, cols="*"):
    with contextlib.closing(catalog.connect(st)) as con:
        return con.sql(f"SELECT {cols} FROM scored_pairs ORDER BY id").to_arrow_table()


def test_pretrained_rm_margin_classes_and_independent_forward(tmp_path, shared_data, rm_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    st = build_store(tmp_path, shared_data, hh=30)
    s = run_scorer(st, "reward_margin", models=[str(rm_dir)], chunk_size=25, bf16=False, **FAST)
    t = scored(st).to_pylist()
    n = len(t)
    assert s.records == n and s.computed == n
    assert all(r["n_models"] == 1 and r["margin_std"] == 0 for r in t)
    for r in t:  # margin_raw is the models' own difference; margin and the classes are length-controlled
        assert r["margin_raw"] == pytest.approx(r["reward_chosen"] - r["reward_rejected"])
        assert r["adaptive_margin"] == pytest.approx(max(r["margin"], 0.0))
    classes = [r["quality_class"] for r in t]
    assert classes.count("incorrect") == pytest.approx(0.2 * n, abs=1)
    assert classes.count("ambiguous") == pytest.approx(0.2 * n, abs=1)
    # the same reward, computed here without the runner (plain rendering, left truncation, no batching)
    tok = AutoTokenizer.from_pretrained(str(rm_dir))
    tok.truncation_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(str(rm_dir)).eval()
    for r in t[:3]:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in list(r["prompt"]) + list(r["chosen"]))
        with torch.inference_mode():
            ref = model(**tok(text, truncation=True, max_length=96, return_tensors="pt")).logits[0, 0].item()
        assert r["reward_chosen"] == pytest.approx(ref, abs=1e-4)
    again = run_scorer(st, "reward_margin", models=[str(rm_dir)], bf16=False, **FAST)
    assert again.computed == 0 and again.skipped


def test_ensemble_of_two_models_reuses_cache(tmp_path, shared_data, rm_dir, rm2_dir):
    st = build_store(tmp_path, shared_data, hh=24)
    one = run_scorer(st, "reward_margin", models=[str(rm_dir)], **FAST)
    two = run_scorer(st, "reward_margin", models=[str(rm_dir), str(rm2_dir)], **FAST)
    assert two.cached == one.records and two.computed == one.records  # only the new model ran
    t = scored(st, "margin, margin_std, n_models").to_pylist()
    assert all(r["n_models"] == 2 for r in t) and any(r["margin_std"] > 0 for r in t)
    assert versions(st)["reward_margin"]["params"]["models"] == [str(rm_dir), str(rm2_dir)]


def _chunk_rows(st) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in st.root.glob("scores/cache/rewards/*/chunk-*.parquet"))


def test_killed_run_resumes_recomputing_at_most_one_chunk(tmp_path, shared_data, rm_dir):
    st = build_store(tmp_path / "a", shared_data, hh=50)
    ref = build_store(tmp_path / "b", shared_data, hh=50)
    code = (
        "from curation.core.store import Store; from curation.scoring import run_scorer; "
        f"run_scorer(Store({str(st.root)!r}), 'reward_margin', models=[{str(rm_dir)!r}], chunk_size=10, "
        "max_length=96, progress=False, device='cpu')"
    )
    env = os.environ | {"CURATE_SCORE_KILL_AFTER_CHUNKS": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    done = _chunk_rows(st)
    assert done == 20  # two chunks committed, nothing else (no result, no half chunk)
    assert not (st.root / "scores" / "reward_margin" / "active.json").exists()
    resumed = run_scorer(st, "reward_margin", models=[str(rm_dir)], chunk_size=10, **FAST)
    assert resumed.cached == done and resumed.computed == resumed.records - done
    whole = run_scorer(ref, "reward_margin", models=[str(rm_dir)], chunk_size=10, **FAST)
    assert whole.key == resumed.key
    a, b = (
        scored(st, "id, reward_chosen, reward_rejected, margin"),
        scored(ref, "id, reward_chosen, reward_rejected, margin"),
    )
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    for col in ("reward_chosen", "reward_rejected", "margin"):
        np.testing.assert_array_equal(a.column(col).to_numpy(), b.column(col).to_numpy())
    again = run_scorer(st, "reward_margin", models=[str(rm_dir)], chunk_size=10, **FAST)
    assert again.computed == 0 and again.skipped


def test_crossfit_is_out_of_fold():
    from curation.scoring.crossfit import crossfit_rewards, fold_of

    rng = np.random.default_rng(0)
    n, d = 300, 400
    fc, fr = rng.normal(size=(n, d)), rng.normal(size=(n, d))  # memorisable noise, nothing to generalise
    keys = [f"prompt {i // 2}" for i in range(n)]  # pairs share prompts two by two
    for rep in range(2):
        f = fold_of(keys, 5, rep)
        assert all(f[i] == f[i + 1] for i in range(0, n, 2))  # a prompt never straddles folds
    rc, rr = crossfit_rewards(fc, fr, keys, folds=5, repeats=2, head="logistic", c=10.0)
    margin = (rc - rr).mean(1)
    assert abs(margin.mean()) < 0.5 * margin.std()  # out of fold: no better than chance on noise
    # with signal in the features the held-out margins are positive
    w = rng.normal(size=d)
    fc2 = fc + 0.3 * w
    rc, rr = crossfit_rewards(fc2, fr, keys, folds=5, repeats=2, head="mlp", epochs=20)
    assert ((rc - rr).mean(1) > 0).mean() > 0.8


def test_crossfit_backend_on_hh(tmp_path, shared_data):
    st = build_store(tmp_path, shared_data, hh=48)
    s = run_scorer(
        st, "reward_margin", backend="crossfit", folds=3, repeats=2, head="logistic", progress=False
    )
    t = scored(st, "margin, margin_std, n_models, quality_class").to_pylist()
    assert s.records == len(t) and all(r["n_models"] == 2 for r in t)
    # two fold assignments: every pair gets two different out-of-fold models, and the margins spread
    assert all(r["margin_std"] > 0 for r in t) and np.std([r["margin"] for r in t]) > 0
    again = run_scorer(
        st, "reward_margin", backend="crossfit", folds=3, repeats=2, head="logistic", progress=False
    )
    assert again.skipped and again.computed == 0 and again.key == s.key
    # the key is the one of the documented params: a refactor that changed it would orphan stores and manifests
    emb = Embedder(st, device="auto")
    combine = {"incorrect_quantile": 0.2, "ambiguous_quantile": 0.4, "incorrect_below": None}
    combine |= {"ambiguous_below": None, "margin_scale": 1.0, "max_margin": None}
    control = {"length_control": True, "length_strata": 5, "length_tokenizer": DEFAULT_ENCODER}
    params = {"backend": "crossfit", "head": "logistic", "folds": 3, "repeats": 2, "epochs": 30, "c": 0.005}
    params |= {"seed": 0, "embeddings": emb.cache.key, "c_bias": 1.0} | combine | control
    ids = [r["id"] for r in scored(st, "id").to_pylist()]
    assert s.key == ResultSpec("reward_margin", "2", emb.fingerprint, params, ids_fingerprint(ids)).key


@pytest.mark.slow
def test_crossfit_finetune_tiny(tmp_path, shared_data, minilm):
    st = build_store(tmp_path, shared_data, hh=16)
    s = run_scorer(
        st,
        "reward_margin",
        backend="crossfit",
        finetune=True,
        folds=2,
        repeats=2,
        epochs=1,
        max_length=48,
        progress=False,
        device="cpu",
    )
    t = scored(st, "margin, margin_std, n_models").to_pylist()
    assert s.computed == len(t) and all(r["n_models"] == 2 for r in t)
    # two fold assignments fine-tune different models: every pair's two margins differ, and margins spread
    assert all(r["margin_std"] > 0 for r in t) and np.std([r["margin"] for r in t]) > 0
