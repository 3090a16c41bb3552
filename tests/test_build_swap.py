"""Replacing a build is one step (issue 23 item 16): a SIGKILL at any point of the swap leaves the old
build or the new one visible, complete, and still there after the next writer.

The old code moved the old build into ``.staging``, then the new one in: a kill in the ~16 ms between left
no build, and the next writer deleted the old copy with the rest of ``.staging``. Each test here kills a
real `curate build` (a child process) right after the k-th file-system step of the swap (every rename,
exchange and delete), for every k, with the atomic exchange (Linux renameat2) and with the fallback for
file systems that cannot exchange.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from curation.builds.build import build, build_names, read_manifest
from curation.core.store import Store
from tests.fixtures.inputs import subset_lines
from tests.fixtures.stores import ingest

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "curation" / "builds" / "policies" / "default.yaml"

#: Runs one build in a child, SIGKILLing itself right after the STEP-th file-system step of the commit.
CHILD = r"""
import os, shutil, signal, sys
import curation.builds.build as build_mod
import curation.core.store as store_mod

mode, step, root, policy = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if mode == "fallback":
    store_mod.exchange_dirs = lambda a, b: False
state = {"on": False, "n": 0}

def counted(fn):
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        if state["on"]:
            state["n"] += 1
            if state["n"] == step:
                os.kill(os.getpid(), signal.SIGKILL)
        return out
    return run

os.rename = counted(os.rename)
os.replace = counted(os.replace)
shutil.rmtree = counted(shutil.rmtree)
if hasattr(store_mod, "exchange_dirs"):
    store_mod.exchange_dirs = counted(store_mod.exchange_dirs)
commit = build_mod._commit

def watched(*args, **kwargs):
    state["on"] = True
    try:
        return commit(*args, **kwargs)
    finally:
        state["on"] = False

build_mod._commit = watched
build_mod.build(store_mod.Store(root), policy, "v1")
print("steps", state["n"])
"""


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> tuple[Path, Path]:
    other = tmp_path_factory.mktemp("swap_policy") / "other.yaml"
    other.write_text(DEFAULT.read_text().replace("eval_fraction: 0.05", "eval_fraction: 0.25"))
    return DEFAULT, other


@pytest.fixture
def store(tmp_path, shared_data, policies) -> Store:
    hh = subset_lines(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", tmp_path / "hh.jsonl", 80)
    st = Store(tmp_path / "store")
    ingest(st, [hh, shared_data / "llama-factory" / "dpo_en_demo.json"])
    build(st, policies[0], "v1")
    return st


def complete_build(store: Store) -> str:
    """The policy sha256 of the visible build v1, after checking every shard against its manifest."""
    folder = store.root / "curated" / "v1"
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["shards"]:
        assert hashlib.sha256((folder / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    return manifest["policy_sha256"]


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_a_kill_at_any_step_of_the_swap_never_loses_the_build(store, policies, mode):
    old_policy, new_policy = policies
    old_sha = complete_build(store)
    kills = 0
    for step in range(1, 10):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(step), str(store.root), str(new_policy)],
            capture_output=True,
            text=True,
            env=os.environ | {"PYTHONPATH": str(REPO)},
            timeout=300,
        )
        if proc.returncode == 0:
            assert f"steps {step - 1}" in proc.stdout, proc.stdout  # every step was tried
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        kills += 1
        if mode == "exchange":  # atomic: a reader at this very moment sees a whole build
            assert complete_build(store) in (old_sha, read_sha(new_policy, store))
        with store.writer_lock("next writer"):  # any writer: an ingest, a score, another build
            pass
        seen = complete_build(store)
        assert seen in (old_sha, read_sha(new_policy, store)), step
        assert build_names(store) == ["v1"] and read_manifest(store, "v1")["policy_sha256"] == seen
        assert not (store.root / ".replaced").exists() or not any(
            (store.root / ".replaced").rglob("manifest.json")
        )
        build(store, old_policy, "v1")  # the next round starts from the old build again
        assert complete_build(store) == old_sha
    assert kills >= 2


_SHAS: dict[Path, str] = {}


def read_sha(policy: Path, store: Store) -> str:
    from curation.builds.policy import load_policy

    if policy not in _SHAS:
        _SHAS[policy] = load_policy(policy).sha256()
    return _SHAS[policy]
