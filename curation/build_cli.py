"""CLI commands of the curation step: `curate build`, `curate explain`, `curate report`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add build, explain and report to the `curate` app."""
    from curation.cli_options import StoreOpt

    @app.command()
    def build(
        policy: str = typer.Argument(
            "default", help="Policy file (.yaml/.yml/.toml) or the name of a bundled policy (default)."
        ),
        store: str | None = StoreOpt,
        name: str | None = typer.Option(None, help="Build name (default: the policy's name)."),
        check: bool = typer.Option(False, "--check", help="Only validate the policy against the store."),
    ) -> None:
        """Apply a curation policy: weighted sft / rm / ranking shards + manifest.json + accounting."""
        from curation.build import build as run_build
        from curation.build import open_connection, relation_name
        from curation.cli import console, fail, open_store
        from curation.policy import PolicyError, check_expressions, load_policy, resolve_policy
        from curation.store import StoreError, safe_name
        from curation.terminal import esc

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
        except (PolicyError, StoreError) as exc:
            fail(str(exc))
            return
        _print_summary(result.manifest, result.path)

    @app.command()
    def explain(
        record_id: str = typer.Argument(..., help="A record id (or a unique prefix of 6+ hex characters)."),
        store: str | None = StoreOpt,
        build: str | None = typer.Option(None, help="Only this build (default: every build in the store)."),
    ) -> None:
        """What happened to one record and why: provenance, scores, class, group, and per build its outcome."""
        from curation.cli import console, fail, open_store
        from curation.explain import explain as run_explain
        from curation.store import StoreError, safe_name
        from curation.terminal import esc as escape

        try:
            if build is not None:
                safe_name(build, "build name")
            e = run_explain(open_store(store), record_id, build)
        except StoreError as exc:
            fail(str(exc))
            return
        console.print(f"[bold]{escape(e.id)}[/] ({escape(e.kind or 'unknown kind')})")
        for k, v in e.record.items():
            console.print(f"  {k}: {escape(str(v))}")
        if e.scores:
            console.print("[bold]scores[/] (NULL = scorer not run)")
            for k, v in e.scores.items():
                shown = (
                    "[dim]null[/]" if v is None else escape(f"{v:.4g}" if isinstance(v, float) else str(v))
                )
                console.print(f"  {k}: {shown}")
        for d in e.duplicates:
            console.print(
                f"[bold]duplicate input row[/]: {escape(str(d['source_file']))} row {d['source_row']} (same content)"
            )
        if e.length:
            _print_length(e.length)
        if not e.builds:
            console.print("[dim]no build holds this record yet (run `curate build`)[/]")
        for b in e.builds:
            where = escape(f"{b['source_file']} row {b['source_row']}")
            line = (
                f"[bold]build {escape(b['build'])}[/] / {escape(b['consumer'])}: "
                f"[bold]{escape(b['outcome'])}[/] ({where})"
            )
            console.print(line)
            if b["status"] == "kept":
                extras = "weight={weight:.4g}".format(**b)
                if b["consumer"] == "rm":
                    extras += " margin={margin:.4g} soft_label={soft_label:.4g} flipped={flipped} group={group}".format(
                        **b
                    )
                if b["consumer"] == "sft":
                    extras += " label_smoothing={label_smoothing:.4g}".format(**b)
                console.print(f"  {escape(extras)}")
            if b.get("clause"):
                console.print(f"  because: {escape(b['clause'])}")

    @app.command()
    def report(
        store: str | None = StoreOpt,
        build: str | None = typer.Option(None, help="Build to report on (default: the newest build)."),
        out: Path = typer.Option(
            Path("report.html"), help="Output HTML file (self-contained, opens offline)."
        ),
    ) -> None:
        """A self-contained HTML quality report with plots of scores, lengths, groups, ε and source mix."""
        from curation.cli import console, fail, open_store
        from curation.report import render_report
        from curation.store import StoreError, safe_name
        from curation.terminal import esc

        try:
            if build is not None:
                safe_name(build, "build name")
            st = open_store(store)
            path = render_report(st, st.output_path(out), build=build)
        except StoreError as exc:
            fail(str(exc))
            return
        console.print(f"report → {esc(path)}")


def _print_length(length: dict) -> None:
    """A pair's chosen-longer standing: its own lengths, and its source's shares (raw, class, builds)."""
    from curation.cli import console
    from curation.length_diagnostics import pct
    from curation.terminal import esc

    side = {True: "chosen is longer", False: "chosen is shorter", None: "a tie"}[length["chosen_longer"]]
    console.print(
        f"[bold]chosen-longer[/] (characters of the response text; ties left out of shares): "
        f"{length['chars_chosen']} vs {length['chars_rejected']} characters, {side}"
    )

    def share(d: dict | None) -> str:
        return "n/a" if not d else f"{pct(d.get('share'))} of {d['pairs'] - d['ties']} untied pairs"

    parts = [f"raw {share(length['source_raw'])}"]
    if length.get("source_class"):
        parts.append(f"class {length['quality_class']} {share(length['source_class'])}")
    for name, c in length["builds"].items():
        if c:
            parts.append(
                f"build {name} rm shards {pct(c.get('share'))} (weighted {pct(c.get('weighted_share'))})"
            )
    console.print(f"  source {esc(length['source'])}: " + "; ".join(esc(p) for p in parts))


def _print_summary(manifest: dict, path: Path) -> None:
    from rich.table import Table

    from curation.cli import console
    from curation.terminal import esc, text

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
