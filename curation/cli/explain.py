"""`curate explain`: what happened to one record and why."""

from __future__ import annotations

import typer

from curation.cli.common import StoreOpt


def explain(
    record_id: str = typer.Argument(..., help="A record id (or a unique prefix of 6+ hex characters)."),
    store: str | None = StoreOpt,
    build: str | None = typer.Option(None, help="Only this build (default: every build in the store)."),
) -> None:
    """What happened to one record and why: provenance, scores, class, group, and per build its outcome."""
    from curation.builds.explain import explain as run_explain
    from curation.cli.common import console, fail, open_store
    from curation.cli.common import esc as escape
    from curation.core.errors import StoreError
    from curation.core.names import safe_name

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
            shown = "[dim]null[/]" if v is None else escape(f"{v:.4g}" if isinstance(v, float) else str(v))
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
                extras += (
                    " margin={margin:.4g} soft_label={soft_label:.4g} flipped={flipped} group={group}".format(
                        **b
                    )
                )
            if b["consumer"] == "sft":
                extras += " label_smoothing={label_smoothing:.4g}".format(**b)
            console.print(f"  {escape(extras)}")
        if b.get("clause"):
            console.print(f"  because: {escape(b['clause'])}")


def _print_length(length: dict) -> None:
    """A pair's chosen-longer standing: its own lengths, and its source's shares (raw, class, builds)."""
    from curation.builds.length_diagnostics import pct
    from curation.cli.common import console, esc

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
