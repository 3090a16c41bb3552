"""`curate build`: apply a policy, write weighted shards + manifest.json + accounting, print the summary."""

from __future__ import annotations

from pathlib import Path

import typer

from curation.cli.common import StoreOpt


def build(
    policy: str = typer.Argument(
        "default", help="Policy file (.yaml/.yml/.toml) or the name of a bundled policy (default)."
    ),
    store: str | None = StoreOpt,
    name: str | None = typer.Option(None, help="Build name (default: the policy's name)."),
    check: bool = typer.Option(False, "--check", help="Only validate the policy against the store."),
) -> None:
    """Apply a curation policy: weighted sft / rm / ranking shards + manifest.json + accounting."""
    from curation import catalog
    from curation.builds.build import build as run_build
    from curation.builds.build import open_connection, relation_name
    from curation.builds.policy import PolicyError, check_expressions, load_policy, resolve_policy
    from curation.cli.common import console, esc, fail, open_store
    from curation.core.errors import StoreError
    from curation.core.names import safe_name

    try:
        if name is not None:
            safe_name(name, "build name")
        pol = load_policy(resolve_policy(policy))
        st = open_store(store)
        if check:
            con = open_connection(st)
            try:
                check_expressions(con, pol, {c: relation_name(c) for c in pol.active()})
            finally:
                con.close()
            console.print(f"policy {esc(repr(pol.name))} is valid against {esc(st.root)}")
            return
        result = run_build(st, pol, name, progress=lambda m: console.print(f"[dim]{esc(m)}[/]"))
        catalog.refresh(st)
    except (PolicyError, StoreError) as exc:
        fail(str(exc))
        return
    _print_summary(result.manifest, result.path)


def _print_summary(manifest: dict, path: Path) -> None:
    from rich.table import Table

    from curation.cli.common import console, esc, text

    t = Table(title=text(f"build {manifest['name']} → {path}"))
    for col in (
        "consumer",
        "records",
        "kept",
        "filtered",
        "near dup",
        "sem dup",
        "capped",
        "quarantined",
        "dup",
    ):
        t.add_column(col, justify="left" if col == "consumer" else "right")
    for consumer, tot in manifest["accounting"]["totals"].items():
        s = tot["by_status"]
        t.add_row(
            text(consumer),
            str(tot["records"]),
            *(
                str(s[k])
                for k in (
                    "kept",
                    "filtered",
                    "near_duplicate",
                    "semantic_duplicate",
                    "capped",
                    "quarantined",
                    "duplicate",
                )
            ),
        )
    console.print(t)
    for consumer, tot in manifest["accounting"]["totals"].items():
        for reason, n in tot["dropped_by"].items():
            console.print(f"  {esc(consumer)}: {esc(reason)}: {n}")
    for warning in (manifest.get("length_diagnostics") or {}).get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {esc(warning)}")
    console.print(
        f"[dim]policy sha256 {manifest['policy_sha256'][:16]}…, lineage {manifest['lineage_sha256'][:16]}…[/]"
    )
