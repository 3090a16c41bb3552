"""Scoring through prefect-ray on a local Ray instance gives the same score tables as the local run."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.fixtures.inputs import subset_json

pytestmark = pytest.mark.usefixtures("prefect_quiet_after_module")


@pytest.mark.slow  # starts a local Ray instance (~20-40 s on 2 cores)
def test_scoring_on_ray_matches_local_run(prefect_api, shared_data, tmp_path):
    from curation.catalog import query
    from curation.core.store import Store
    from flows.pipeline import ingest_flow, score_flow
    from flows.ray import score_on_ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    landing = tmp_path / "landing"
    landing.mkdir()
    subset_json(shared_data / "llama-factory" / "dpo_en_demo.json", landing / "dpo.json", 0, 60)
    scorers = {"length_bias": {"progress": False}}
    sql = "SELECT id, len_prompt, len_chosen, len_rejected, len_diff, chosen_longer FROM scored_pairs ORDER BY id"

    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    tables, accepted = {}, {}
    for where in ("local", "ray"):
        store = tmp_path / where
        accepted[where] = ingest_flow(str(store), [str(landing)])["files"][0]["accepted"]
        if where == "local":
            out = score_flow(str(store), scorers)
        else:
            out = score_on_ray(
                str(store),
                scorers,
                num_cpus=2,
                include_dashboard=False,
                _temp_dir=ray_tmp,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}},
            )
        assert [s["state"] for s in out["steps"]] == ["Completed"]
        tables[where] = query(Store(store), sql)
    import ray

    ray.shutdown()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert tables["local"].num_rows == accepted["local"] > 50
    assert tables["local"].column("len_chosen").null_count == 0
    assert tables["ray"].equals(tables["local"])
