"""`curate report`: one self-contained HTML file with the data-quality plots of a store and a build.

Plots (plotly; plotly.js is inlined once, so the file opens offline):

1. preference strength (margin) by quality class;
2. reward versus response length (chosen and rejected);
3. length difference (chosen - rejected, characters) by source: how often the label agrees with "longer";
4. the chosen-longer share per source: raw, per quality class, and in the build's rm shards
   (unweighted and weighted by the shard weight; curation.builds.length_diagnostics);
5. spurious-feature group sizes and the share of flagged pairs per group;
6. the UAL label-smoothing epsilon of the SFT records;
7. source mix before (ingested) and after (kept in the build);
8. before/after counts per consumer by outcome (kept, filtered, duplicates, ...).

Each figure sits in a ``<section class="figure" data-figure=... data-points=N>``; N is the
number of data points plotted (0 when the scorer behind it has not run, in which case the
plot carries a note saying which command fills it), followed by a note on how to read it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import os
import uuid
from pathlib import Path

import orjson
import polars as pl

from curation.builds.build import build_names, frame, open_connection, relation_name
from curation.builds.length_diagnostics import (
    CLASSES,
    DEFINITION,
    chars_sql,
    longer_sign,
    pct,
    raw_diagnostics,
)
from curation.core.errors import StoreError
from curation.core.store import Store

SAMPLE_ROWS = 4000  # points per scatter plot (reservoir sample with a fixed seed)
CLASS_COLORS = {"incorrect": "#d62728", "ambiguous": "#ff7f0e", "clean": "#2ca02c", "unscored": "#7f7f7f"}


def _empty(fig, note: str):
    fig.add_annotation(
        text=note, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 14}
    )
    return fig


def _layout(fig, title: str, x: str, y: str):
    fig.update_layout(
        title=title, xaxis_title=x, yaxis_title=y, template="plotly_white", height=420, margin={"t": 60}
    )
    return fig


# -------------------------------------------------------------------- figures
def fig_margin_by_class(con) -> tuple[object, int]:
    import plotly.graph_objects as go

    df = frame(
        con,
        "SELECT margin, coalesce(quality_class, 'unscored') AS cls FROM curate_rm WHERE margin IS NOT NULL",
    )
    fig = go.Figure()
    for cls in ("incorrect", "ambiguous", "clean", "unscored"):
        sub = df.filter(pl.col("cls") == cls)
        if sub.height:
            fig.add_trace(
                go.Histogram(
                    x=sub["margin"].to_list(), name=f"{cls} ({sub.height})", marker_color=CLASS_COLORS[cls]
                )
            )
    fig.update_layout(barmode="overlay")
    fig.update_traces(opacity=0.7)
    if not df.height:
        _empty(fig, "no preference strength yet: run `curate score reward_margin`")
    return _layout(
        fig, "Preference strength μ by quality class", "margin μ = mean r(chosen) − r(rejected)", "pairs"
    ), df.height


def fig_reward_vs_length(con) -> tuple[object, int]:
    import plotly.graph_objects as go
    from scipy.stats import spearmanr

    df = frame(
        con,
        "SELECT reward_chosen, reward_rejected, len_chosen, len_rejected FROM curate_rm "
        "WHERE reward_chosen IS NOT NULL AND len_chosen IS NOT NULL",
    )
    if df.height > SAMPLE_ROWS:
        df = df.sample(SAMPLE_ROWS, seed=0)
    fig = go.Figure()
    title = "Reward versus response length"
    if df.height:
        rewards = df["reward_chosen"].to_list() + df["reward_rejected"].to_list()
        lengths = df["len_chosen"].to_list() + df["len_rejected"].to_list()
        rho = spearmanr(lengths, rewards).statistic
        title += f" (Spearman ρ = {rho:.3f})"
        for side, color in (("chosen", "#1f77b4"), ("rejected", "#d62728")):
            fig.add_trace(
                go.Scattergl(
                    x=df[f"len_{side}"].to_list(),
                    y=df[f"reward_{side}"].to_list(),
                    mode="markers",
                    name=side,
                    marker={"size": 4, "opacity": 0.5, "color": color},
                )
            )
    else:
        _empty(
            fig, "needs rewards and lengths: run `curate score reward_margin` and `curate score length_bias`"
        )
    return _layout(fig, title, "response length (tokens)", "reward"), df.height


def fig_length_diff(con) -> tuple[object, int]:
    import plotly.graph_objects as go

    df = frame(
        con,
        f"SELECT source, {chars_sql('chosen')} AS __chars_chosen, {chars_sql('rejected')} AS __chars_rejected "
        f"FROM {relation_name('rm')}",
    ).with_columns(
        len_diff=pl.col("__chars_chosen") - pl.col("__chars_rejected"),
        __longer=longer_sign("__chars_chosen", "__chars_rejected"),
    )
    fig = go.Figure()
    title = "Length difference (chosen − rejected) versus the preference label"
    if df.height:
        title += f": chosen is longer in {pct(_share(df))} of pairs (ties left out)"
        for src in sorted(df["source"].unique().to_list()):
            sub = df.filter(pl.col("source") == src)
            fig.add_trace(
                go.Histogram(x=sub["len_diff"].to_list(), name=f"{src} (chosen longer {pct(_share(sub))})")
            )
        fig.update_layout(barmode="overlay")
        fig.update_traces(opacity=0.6)
        fig.add_vline(x=0, line_dash="dash", line_color="black")
    else:
        _empty(fig, "no preference pairs in this store")
    return _layout(fig, title, "len(chosen) − len(rejected) in characters", "pairs"), df.height


def _share(df: pl.DataFrame) -> float | None:
    untied = df.filter(pl.col("__longer") != 0)
    return float((untied["__longer"] > 0).mean()) if untied.height else None  # type: ignore[arg-type]


def fig_chosen_longer(con, manifest: dict | None) -> tuple[object, int]:
    """Per source: the raw chosen-longer share, per quality class, and in the build's rm shards."""
    import plotly.graph_objects as go

    raw = raw_diagnostics(
        frame(
            con,
            f"SELECT source, quality_class, {chars_sql('chosen')} AS __chars_chosen, "
            f"{chars_sql('rejected')} AS __chars_rejected FROM {relation_name('rm')}",
        )
    )
    built = ((manifest or {}).get("length_diagnostics") or {}).get("by_source", {})
    sources = sorted(raw)
    bars: list[tuple[str, str, list[float | None]]] = [
        ("raw pairs", "#1f77b4", [raw[s]["raw"]["share"] for s in sources])
    ]
    for cls in CLASSES:
        vals = [((raw[s].get("raw_by_class") or {}).get(cls) or {}).get("share") for s in sources]
        if any(v is not None for v in vals):
            bars.append((f"raw, class {cls}", CLASS_COLORS[cls], vals))
    if built:
        cur = [(built.get(s) or {}).get("curated") or {} for s in sources]
        bars.append(("rm shards", "#17becf", [c.get("share") for c in cur]))
        bars.append(("rm shards, weighted", "#9467bd", [c.get("weighted_share") for c in cur]))
    fig = go.Figure()
    n = 0
    for label, color, vals in bars:
        fig.add_trace(go.Bar(x=sources, y=vals, name=label, marker_color=color, text=[pct(v) for v in vals]))
        n += sum(v is not None for v in vals)
    fig.update_layout(barmode="group", yaxis={"range": [0, 1], "tickformat": ".0%"})
    if sources:
        fig.add_hline(y=0.5, line_dash="dash", line_color="black")
    else:
        _empty(fig, "no preference pairs in this store")
    title = "Chosen-longer share per source: raw, per quality class, and in the rm shards"
    return _layout(fig, title, "source", "share of pairs where chosen is longer"), n


def fig_groups(con) -> tuple[object, int]:
    import plotly.graph_objects as go

    df = frame(
        con,
        """SELECT group_id, count(*) AS n,
                  avg(CASE WHEN quality_class IN ('incorrect', 'ambiguous') THEN 1.0 ELSE 0.0 END) AS flagged_class,
                  avg(CASE WHEN coalesce(length_explained, false) THEN 1.0 ELSE 0.0 END) AS flagged_length,
                  avg(group_weight) AS mean_weight
           FROM curate_rm WHERE group_id IS NOT NULL GROUP BY group_id ORDER BY group_id""",
    )
    fig = go.Figure()
    if df.height:
        labels = [f"group {g}" for g in df["group_id"].to_list()]
        fig.add_trace(go.Bar(x=labels, y=df["n"].to_list(), name="pairs", marker_color="#9467bd"))
        for column, name in (
            ("flagged_class", "share incorrect/ambiguous"),
            ("flagged_length", "share length-explained"),
        ):
            fig.add_trace(
                go.Scatter(x=labels, y=df[column].to_list(), name=name, yaxis="y2", mode="lines+markers")
            )
        fig.update_layout(
            yaxis2={"overlaying": "y", "side": "right", "range": [0, 1], "title": "flagged share"}
        )
    else:
        _empty(fig, "no groups yet: run `curate score spurious_groups`")
    return _layout(fig, "Spurious-feature groups: sizes and flagged shares", "group", "pairs"), df.height


def fig_epsilon(con, acc: pl.DataFrame | None) -> tuple[object, int]:
    import plotly.graph_objects as go

    scored = frame(con, "SELECT label_smoothing FROM curate_sft WHERE label_smoothing IS NOT NULL")
    fig = go.Figure()
    n = scored.height
    if n:
        fig.add_trace(
            go.Histogram(x=scored["label_smoothing"].to_list(), name=f"scored records ({n})", opacity=0.6)
        )
    if acc is not None:
        kept = acc.filter((pl.col("consumer") == "sft") & (pl.col("status") == "kept"))
        if kept.height:
            fig.add_trace(
                go.Histogram(
                    x=kept["label_smoothing"].to_list(), name=f"kept in build ({kept.height})", opacity=0.6
                )
            )
            n += kept.height
    fig.update_layout(barmode="overlay")
    if not scored.height:
        _empty(fig, "no uncertainty yet: run `curate score uncertainty` (ε = 0 means plain cross-entropy)")
    return _layout(fig, "UAL label smoothing ε of SFT records", "ε", "records"), n


def fig_source_mix(con, acc: pl.DataFrame | None) -> tuple[object, int]:
    import plotly.graph_objects as go

    before = frame(
        con,
        """SELECT kind, source, sum(records_out) AS n FROM ingest_runs GROUP BY ALL ORDER BY kind, source""",
    )
    fig = go.Figure()
    labels = [f"{k}: {s}" for k, s in before.select("kind", "source").iter_rows()]
    fig.add_trace(go.Bar(x=labels, y=before["n"].to_list(), name="records at ingest"))
    n = before.height
    if acc is not None:
        kept = acc.filter(pl.col("status") == "kept").group_by("kind", "source").len()
        kept_map = {(k, s): c for k, s, c in kept.iter_rows()}
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[kept_map.get((k, s), 0) for k, s in before.select("kind", "source").iter_rows()],
                name="kept in build",
            )
        )
        n += kept.height
    fig.update_layout(barmode="group")
    if not before.height:
        _empty(fig, "empty store: run `curate ingest`")
    return _layout(fig, "Source mix before and after curation", "kind: source", "records"), n


def fig_before_after(acc: pl.DataFrame | None) -> tuple[object, int]:
    import plotly.graph_objects as go

    fig = go.Figure()
    if acc is None or not acc.height:
        _empty(fig, "no build yet: run `curate build`")
        return _layout(fig, "Records before and after curation", "consumer", "records"), 0
    counts = acc.group_by("consumer", "status").len()
    consumers = sorted(acc["consumer"].unique().to_list())
    for status in (
        "kept",
        "filtered",
        "capped",
        "near_duplicate",
        "semantic_duplicate",
        "duplicate",
        "quarantined",
    ):
        sub = dict(counts.filter(pl.col("status") == status).select("consumer", "len").iter_rows())
        if sub:
            fig.add_trace(go.Bar(x=consumers, y=[sub.get(c, 0) for c in consumers], name=status))
    fig.update_layout(barmode="stack")
    return _layout(fig, "Every input record and what became of it", "consumer", "records"), acc.height


# ---------------------------------------------------------------------- page
def _latest_build(store: Store) -> str | None:
    names = build_names(store)
    if not names:
        return None
    return max(names, key=lambda n: (store.path("curated", n, "manifest.json").stat().st_mtime, n))


def render_report(store: Store, out: str | os.PathLike[str], build: str | None = None) -> Path:
    """Write the HTML report of ``store`` (and of ``build``, default: the newest build) to ``out``: outside
    the store, or ``<store>/reports/<name>`` (``Store.output_path``; checked here, so that every caller, the
    CLI and the build flow's ``report_out`` alike, is held to it)."""
    import plotly.io as pio

    out = store.output_path(out)

    name = build or _latest_build(store)
    manifest, acc = None, None
    if name is not None:
        folder = store.path("curated", name)
        if not (folder / "manifest.json").is_file():
            raise StoreError(f"no build {name!r} in {store.root} (run `curate build` first)")
        manifest = orjson.loads((folder / "manifest.json").read_bytes())
        acc = pl.read_parquet(folder / "accounting.parquet")
    with contextlib.closing(open_connection(store)) as con:
        figures = [
            ("margin_by_class", *fig_margin_by_class(con)),
            ("reward_vs_length", *fig_reward_vs_length(con)),
            ("length_diff_vs_label", *fig_length_diff(con)),
            ("chosen_longer", *fig_chosen_longer(con, manifest)),
            ("groups", *fig_groups(con)),
            ("epsilon", *fig_epsilon(con, acc)),
            ("source_mix", *fig_source_mix(con, acc)),
            ("before_after", *fig_before_after(acc)),
        ]
    sections = []
    for i, (key, fig, n) in enumerate(figures):
        div = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=(i == 0),  # plotly.js inlined once: the page needs no network
            div_id=f"fig-{key}",
            config={"displaylogo": False, "responsive": True},
        )
        note = f'<p class="note">{NOTES[key]}</p>' if key in NOTES else ""
        sections.append(
            f'<section class="figure" data-figure="{key}" data-points="{n}">{div}{note}</section>'
        )
    page = _PAGE.format(
        title=html.escape(f"curate report: {name or 'store'}"),
        summary=_summary(store, name, manifest),
        figures="\n".join(sections),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def _summary(store: Store, name: str | None, manifest: dict | None) -> str:
    rows = [("store", str(store.root)), ("generated", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))]
    if manifest:
        rows += [
            ("build", name or ""),
            ("policy sha256", manifest["policy_sha256"]),
            ("lineage sha256", manifest["lineage_sha256"]),
            (
                "scorers",
                ", ".join(f"{k} {v.get('version')}" for k, v in manifest["scorers"].items()) or "none",
            ),
            ("shards", str(len(manifest["shards"]))),
        ]
        for consumer, tot in manifest["accounting"]["totals"].items():
            kept = tot["by_status"]["kept"]
            drops = ", ".join(f"{k}: {v}" for k, v in tot["dropped_by"].items()) or "none"
            rows.append((consumer, f"{kept} kept of {tot['records']} records; drops by clause: {drops}"))
        for warning in (manifest.get("length_diagnostics") or {}).get("warnings", []):
            rows.append(("length warning", warning))
    else:
        rows.append(("build", "none yet (run `curate build`)"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='summary'>{body}</table>"


#: How to read each figure (static HTML, no user data).
NOTES = {
    "margin_by_class": (
        "Preference strength μ is the mean reward margin r(chosen) − r(rejected) over the reward models, "
        "by default with the length and markdown differences controlled for (the crossfit head's length "
        "expert is trained jointly and dropped; reward-model and judge margins are residualised on the "
        "same features out of fold); <code>margin_raw</code> keeps the uncontrolled margin. Classes are "
        "taken within strata of similar length difference, so a class has its source's length make-up: "
        "<b>incorrect</b> (the lowest 20 % of μ: the content goes against the label, which is likely "
        "wrong; the default policy flips these), <b>ambiguous</b> (the next 20 %: a weak preference; "
        "soft-labelled by default), <b>clean</b> (the rest). Unscored pairs count as clean. "
        "<code>--param length_control=false</code> gives the uncontrolled margin and global classes."
    ),
    "length_diff_vs_label": (
        "Characters of the chosen response minus the rejected one's, per source. Mass right of 0 means "
        "the label tends to follow length."
    ),
    "chosen_longer": (
        f"How often the chosen response is the longer one: {html.escape(DEFINITION)}. 50 % (dashed line) "
        "means length says nothing about the label. Per quality class once reward_margin has run; "
        "<b>rm shards</b> are the build's kept pairs as written (a flipped pair's chosen is the raw "
        "rejected), unweighted and weighted by the shard weight (what the trainer sees). A build whose "
        "weighted share moves more than 3 points further from 50 % than the raw share warns, naming the "
        "source; <code>consumers.rm.balance_length: true</code> reweights each source to 50 %."
    ),
}

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }}
table.summary {{ border-collapse: collapse; margin-bottom: 1.5em; }}
table.summary th {{ text-align: left; padding: 0.2em 1em 0.2em 0; color: #555; font-weight: 600; }}
table.summary td {{ font-family: ui-monospace, monospace; font-size: 0.9em; }}
section.figure {{ margin: 1em 0 2em; border-top: 1px solid #eee; }}
p.note {{ color: #444; max-width: 75em; font-size: 0.95em; }}
</style></head>
<body><h1>{title}</h1>
{summary}
{figures}
</body></html>
"""
