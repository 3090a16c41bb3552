"""The package stays layered (docs/architecture.md): import-linter's contracts in pyproject.toml hold, every
module belongs to a layer, and no module imports itself back through a cycle (grimp reads every import
statement, lazy imports inside functions and TYPE_CHECKING blocks included)."""

from __future__ import annotations

import graphlib
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "curation", "training", "flows")


def _graph():
    return grimp.build_graph(*PACKAGES, include_external_packages=False)


def test_import_contracts_hold():
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / "pyproject.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "0 broken" in out, out


def test_every_module_belongs_to_a_layer():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    names = {name.strip() for layer in layers for name in layer.split("|")}
    loose = sorted(
        m
        for m in _graph().modules
        if m not in PACKAGES and not any(m == n or m.startswith(n + ".") for n in names)
    )
    assert not loose, f"modules outside every layer (add them to a layer in pyproject.toml): {loose}"


def test_no_import_cycles():
    graph = _graph()
    edges = {
        m: {d for d in graph.find_modules_directly_imported_by(m) if not m.startswith(d + ".")}
        for m in graph.modules
    }  # a submodule importing its own package's __init__ is how packages work, not a cycle
    try:
        list(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
