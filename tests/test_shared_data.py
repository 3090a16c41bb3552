"""The ``shared_data`` fixture: without the real datasets a test fails in CI and skips, with the reason,
elsewhere; .ci/run sets CI."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.fixtures.paths import REPO


def _run_with_missing_data(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    """A one-test file that needs ``shared_data``, run by pytest with our conftest and no datasets."""
    test = tmp_path / "test_needs_data.py"
    test.write_text("def test_needs_data(shared_data):\n    assert shared_data.is_dir()\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"CURATE_SHARED_DATA": str(tmp_path / "no-such-folder"), "PYTHONPATH": str(REPO)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            str(test),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_datasets_fail_in_ci(tmp_path):
    proc = _run_with_missing_data(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout, proc.stdout
    assert f"real datasets not found at {tmp_path / 'no-such-folder'}" in proc.stdout
    assert "CI is set" in proc.stdout


def test_missing_datasets_skip_with_the_reason_outside_ci(tmp_path):
    proc = _run_with_missing_data(tmp_path, None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout, proc.stdout
    assert f"real datasets not found at {tmp_path / 'no-such-folder'}" in proc.stdout
    assert "CURATE_SHARED_DATA" in proc.stdout


def test_ci_entry_point_sets_ci():
    """.ci/run exports CI=true before it runs the tests, so CI never skips a real-data test."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    exports = [i for i, line in enumerate(lines) if line.strip() == "export CI=true"]
    runs = [i for i, line in enumerate(lines) if line.strip().startswith("exec make test")]
    assert exports and runs and exports[0] < runs[0], lines
