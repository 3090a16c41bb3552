"""One ``--store`` option for every command (issue 23 item 19): `curate demo` and `curate serve` took
"store" and ignored $CURATE_STORE, unlike every other command."""

from __future__ import annotations

import inspect

import pytest
from typer.testing import CliRunner

from curation.cli import app
from curation.cli.common import StoreOpt

runner = CliRunner()


def test_every_command_with_a_store_uses_the_one_option():
    commands = {info.name or info.callback.__name__: info.callback for info in app.registered_commands}
    with_store = {n: f for n, f in commands.items() if "store" in inspect.signature(f).parameters}
    assert {"ingest", "sql", "stats", "score", "build", "explain", "report", "demo", "serve"} <= set(
        with_store
    )
    for name, func in with_store.items():
        assert inspect.signature(func).parameters["store"].default is StoreOpt, name


class _Stop(Exception):
    pass


def test_demo_and_serve_use_curate_store(monkeypatch, tmp_path):
    import flows.demo
    import flows.deploy

    seen: dict[str, object] = {}

    def fake_demo(store, *_a, **_k):
        seen["demo"] = store
        raise _Stop

    def fake_serve(_file, overrides, *_a, **_k):
        seen["serve"] = overrides

    monkeypatch.setattr(flows.demo, "run_demo", fake_demo)
    monkeypatch.setattr(flows.deploy, "serve", fake_serve)
    env = {"CURATE_STORE": str(tmp_path / "from-env")}
    with pytest.raises(_Stop):
        runner.invoke(app, ["demo"], env=env, catch_exceptions=False)
    assert seen["demo"] == str(tmp_path / "from-env")
    runner.invoke(app, ["serve"], env=env, catch_exceptions=False)
    assert seen["serve"] == {"store": str(tmp_path / "from-env")}
    with pytest.raises(_Stop):
        runner.invoke(app, ["demo", "--store", str(tmp_path / "flag")], env=env, catch_exceptions=False)
    assert seen["demo"] == str(tmp_path / "flag")
    runner.invoke(app, ["serve"], env={"CURATE_STORE": ""}, catch_exceptions=False)
    assert seen["serve"] == {}  # neither: each deployment keeps the store its file names
