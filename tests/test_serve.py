"""`curate serve` registers the prefect.yaml deployments with their schedules and limits, and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


def test_deployment_file_is_read_with_schedules_and_overlap_guard():
    from flows.deploy import DEFAULT_FILE, load_specs

    specs = {s.name: s for s in load_specs(DEFAULT_FILE)}
    assert specs["hourly-landing"].schedules == [{"cron": "0 * * * *", "timezone": "UTC"}]
    assert specs["nightly-build"].entrypoint == "flows/pipeline.py:build_flow"
    for spec in specs.values():
        assert spec.concurrency_limit == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_unknown_deployment_is_refused_by_name(tmp_path):
    from flows.deploy import DEFAULT_FILE, DeploymentFileError, load_specs

    with pytest.raises(DeploymentFileError, match="no deployment named weekly"):
        load_specs(DEFAULT_FILE, only=["weekly"])
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: x\n")
    with pytest.raises(DeploymentFileError, match=r"deployments\[0\] has no 'entrypoint'"):
        load_specs(bad)


def test_curate_serve_registers_schedules_and_stops_cleanly(prefect_api, tmp_path):
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect_home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "curation.cli",
        "serve",
        "--store",
        str(tmp_path / "store"),
        "--landing",
        str(tmp_path / "landing"),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def deployments():
        async with get_client() as client:
            return await client.read_deployments(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["hourly-landing", "nightly-build"])
                )
            )

    try:
        found, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = anyio.run(deployments)
            # registered, and the runner has polled for runs: its own SIGTERM handler is in place (a SIGTERM in
            # the instant before that lands in Prefect's start-up: test_a_stop_wrapped_by_a_library...)
            if len(found) == 2 and all(d.schedules and d.last_polled for d in found):
                break
            time.sleep(1)
        assert proc.poll() is None, proc.communicate()[0]
        by_name = {d.name: d for d in found}
        assert set(by_name) == {"hourly-landing", "nightly-build"}
        assert all(d.last_polled for d in found)  # served: the runner polls for scheduled runs
        hourly = by_name["hourly-landing"]
        assert hourly.schedules[0].schedule.cron == "0 * * * *"
        assert hourly.schedules[0].active
        assert hourly.parameters == {
            "store": str(tmp_path / "store"),
            "landing": str(tmp_path / "landing"),
            "workers": 1,
            "ray_address": None,
        }
        assert hourly.concurrency_limit == 1 or hourly.global_concurrency_limit.limit == 1
        assert hourly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    finally:
        proc.send_signal(signal.SIGTERM)  # what process managers send
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"curate serve did not stop within 60 s of SIGTERM:\n{out[-3000:]}")
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    # the schedules are paused on the way out, so runs do not pile up as "late" while nothing serves them
    assert all(d.paused for d in anyio.run(deployments)), out[-3000:]


@pytest.mark.parametrize("signalled", [True, False])
def test_a_stop_wrapped_by_a_library_is_still_a_stop(monkeypatch, signalled):
    """SIGTERM that lands inside a library which wraps the interrupt in its own error (pydantic's
    SchemaError while Prefect imports its web server) stops cleanly; the same error without a
    SIGTERM is a real error and propagates. The deployments are paused either way."""
    import prefect

    from flows import deploy

    paused = []
    monkeypatch.setattr(deploy, "runner_deployments", lambda specs, overrides: [])
    monkeypatch.setattr(deploy, "pause", paused.append)

    def fake_serve(*deployments, limit=None):
        try:
            if signalled:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
        except KeyboardInterrupt as exc:
            raise RuntimeError("wrapped") from exc
        raise RuntimeError("a real failure")

    monkeypatch.setattr(prefect, "serve", fake_serve)
    if signalled:
        deploy.serve()
    else:
        with pytest.raises(RuntimeError, match="a real failure"):
            deploy.serve()
    assert paused == [[]]
