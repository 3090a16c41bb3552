"""Chosen-longer share: how often a pair's chosen response is the longer one, raw and curated, per source.

One definition for every place that shows or uses it (``curate stats``, ``curate explain``, the HTML
report, each build's manifest, and the rm consumer's ``balance_length``):

* a response's text is its assistant turns joined by newlines (``scoring.texts.response_text``), and
  its length is the number of characters (Unicode code points) of that text;
* "chosen is longer" when the chosen text has more characters than the rejected one; pairs with equal
  counts are ties and are left out of every share;
* share = longer / (longer + shorter); weighted share = Σ w·[longer] / Σ w (over the pairs that are not
  ties), with w the shard weight.

Characters rather than tokens: they exist before any scorer has run and do not depend on a tokenizer
(``length_bias`` counts tokens of one tokenizer; its ``chosen_longer`` can differ on near-ties).

The curated share is measured on the rm shards as written: a flipped pair's chosen is the raw rejected.
A build whose weighted curated share of a source is further from 0.5 than that source's raw share by
more than ``WARN_POINTS`` percentage points gets a warning naming the source (in the manifest, printed
by ``curate build``): its remedies and filters have pushed the data towards a length prior.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    pass

#: A build warns when a source's weighted curated share moves further from 0.5 than raw by more than this.
WARN_POINTS = 3.0
DEFINITION = (
    "chosen is longer when its response text (assistant turns joined by newlines) has more characters "
    "than the rejected one's; ties are left out of every share"
)
CLASSES = ("incorrect", "ambiguous", "clean")


def chars_sql(side: str) -> str:
    """SQL for the character length of a response column (``chosen`` or ``rejected``) of a pair."""
    assert side in ("chosen", "rejected")
    return (
        f"length(array_to_string(list_transform(list_filter({side}, lambda m: m.role = 'assistant'), "
        "lambda m: m.content), chr(10)))"
    )


def longer_sign(chars_chosen: str, chars_rejected: str) -> pl.Expr:
    """+1 when chosen is longer, -1 when shorter, 0 for a tie (null when a length is null)."""
    return (pl.col(chars_chosen) - pl.col(chars_rejected)).sign().cast(pl.Int8)


def _summary(sign: pl.Expr, weight: pl.Expr | None) -> list[pl.Expr]:
    untied = sign != 0
    out = [
        pl.len().alias("pairs"),
        (sign == 0).sum().alias("ties"),
        (sign > 0).sum().alias("longer"),
        (sign < 0).sum().alias("shorter"),
    ]
    if weight is not None:
        w = weight.fill_null(0.0)
        out += [
            pl.when(untied).then(w).otherwise(0.0).sum().alias("__w_untied"),
            pl.when(sign > 0).then(w).otherwise(0.0).sum().alias("__w_longer"),
        ]
    return out


def _as_dict(row: dict[str, Any], weighted: bool) -> dict[str, Any]:
    untied = row["longer"] + row["shorter"]
    out = {
        "pairs": int(row["pairs"]),
        "ties": int(row["ties"]),
        "longer": int(row["longer"]),
        "share": _round(row["longer"] / untied if untied else None),
    }
    if weighted:
        wu = row["__w_untied"]
        out["weighted_share"] = _round(row["__w_longer"] / wu if wu > 0 else None)
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def shares(
    df: pl.DataFrame, by: list[str], sign: str = "__longer", weight: str | None = None
) -> dict[tuple, dict[str, Any]]:
    """Chosen-longer counts and shares of ``df`` per group of ``by`` (keys are tuples of the group values)."""
    w = pl.col(weight) if weight else None
    grouped = df.group_by(by).agg(_summary(pl.col(sign), w)).sort(by, nulls_last=True)
    return {tuple(r[k] for k in by): _as_dict(r, weight is not None) for r in grouped.iter_rows(named=True)}


def raw_diagnostics(df: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per source: the raw share over every pair of the store and, where reward_margin has run, per
    quality class. ``df``: one row per pair with ``source``, ``quality_class``, ``__chars_chosen`` and
    ``__chars_rejected``."""
    df = df.with_columns(__longer=longer_sign("__chars_chosen", "__chars_rejected"))
    out: dict[str, dict[str, Any]] = {src: {"raw": d} for (src,), d in shares(df, ["source"]).items()}
    classed = df.filter(pl.col("quality_class").is_not_null())
    for (src, cls), d in shares(classed, ["source", "quality_class"]).items():
        out[src].setdefault("raw_by_class", {})[cls] = d
    return out


def curated_sign() -> pl.Expr:
    """The sign as written to the rm shards: a flipped pair's chosen is the raw rejected."""
    raw = longer_sign("__chars_chosen", "__chars_rejected")
    return pl.when(pl.col("flipped").fill_null(False)).then(-raw).otherwise(raw)


def build_diagnostics(decisions: pl.DataFrame, warn_points: float = WARN_POINTS) -> dict[str, Any]:
    """The manifest's ``length_diagnostics`` of the rm consumer: raw and per-class shares, the curated
    shares (all kept pairs, and per split; weighted by the shard weight and unweighted), how many points
    further from 0.5 the weighted curated share is than raw, and the warnings."""
    by_source = raw_diagnostics(decisions)
    kept = decisions.filter(pl.col("status") == "kept").with_columns(__longer=curated_sign())
    for (src,), d in shares(kept, ["source"], weight="weight").items():
        by_source[src]["curated"] = d
    for (src, split), d in shares(kept, ["source", "split"], weight="weight").items():
        by_source[src].setdefault("curated_by_split", {})[split] = d
    warnings = []
    for src, d in by_source.items():
        moved = further_points(d["raw"]["share"], (d.get("curated") or {}).get("weighted_share"))
        d["further_from_half_points"] = moved
        if moved is not None and moved > warn_points:
            warnings.append(drift_warning(src, d, moved))
    return {
        "definition": DEFINITION,
        "warn_points": warn_points,
        "by_source": by_source,
        "warnings": warnings,
    }


def further_points(raw: float | None, curated: float | None) -> float | None:
    """Percentage points by which ``curated`` is further from 0.5 than ``raw`` (negative: closer)."""
    if raw is None or curated is None:
        return None
    return round(100.0 * (abs(curated - 0.5) - abs(raw - 0.5)), 2)


def drift_warning(source: str, d: dict[str, Any], moved: float) -> str:
    c = d["curated"]
    return (
        f"rm source {source!r}: the curated chosen-longer share {pct(c['weighted_share'])} (weighted; "
        f"unweighted {pct(c['share'])}) is {moved:.1f} points further from 50 % than the raw "
        f"{pct(d['raw']['share'])}: the policy's drops, flips or weights push it towards a length prior "
        "(consider consumers.rm.balance_length: true)"
    )


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f} %"


# ------------------------------------------------------------------ remedy
def balance_weights(df: pl.DataFrame, weight: str = "weight") -> pl.DataFrame:
    """``balance_length``: rescale the weights of the kept pairs of each (source, split) so that the
    weighted chosen-longer share (curated orientation) is 0.5 and the mean weight is 1.

    Longer pairs are multiplied by 0.5 W / W_longer, shorter ones by 0.5 W / W_shorter (W the weight of
    the pairs that are not ties), ties by 1; then every weight of the group by n / Σ w. A group with no
    weight on one side cannot be balanced: it is only renormalised (``build_diagnostics`` shows its
    share). Rows that are not kept are left as they are."""
    kept = pl.col("status") == "kept"
    s = curated_sign()
    w = pl.col(weight)
    grp = ["source", "split"]
    w_longer = pl.when(kept & (s > 0)).then(w).otherwise(0.0).sum().over(grp)
    w_shorter = pl.when(kept & (s < 0)).then(w).otherwise(0.0).sum().over(grp)
    total = w_longer + w_shorter
    can = (w_longer > 0) & (w_shorter > 0)
    factor = (
        pl.when(can & (s > 0))
        .then(0.5 * total / w_longer)
        .when(can & (s < 0))
        .then(0.5 * total / w_shorter)
        .otherwise(1.0)
    )
    df = df.with_columns(__balanced=pl.when(kept).then(w * factor))
    n = kept.cast(pl.Int64).sum().over(grp)
    mass = pl.when(kept).then(pl.col("__balanced")).otherwise(0.0).sum().over(grp)
    renorm = pl.when(kept & (mass > 0)).then(pl.col("__balanced") * n / mass).otherwise(pl.col("__balanced"))
    return df.with_columns(pl.when(kept).then(renorm).otherwise(w).alias(weight)).drop("__balanced")


def raw_rows(diag: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Printable rows: per source the raw share and, where scored, the share of each quality class."""
    rows = []
    for src, d in sorted(diag.items()):
        by_class = d.get("raw_by_class") or {}
        row = {
            "source": src,
            "pairs": d["raw"]["pairs"],
            "ties": d["raw"]["ties"],
            "chosen longer": pct(d["raw"]["share"]),
        }
        for cls in CLASSES:
            c = by_class.get(cls)
            row[cls] = f"{pct(c['share'])} of {c['pairs']}" if c else "-"
        rows.append(row)
    return rows


def build_rows(name: str, diag: dict[str, Any]) -> list[dict[str, Any]]:
    """Printable rows of one build's manifest diagnostics: raw against curated, per source."""
    rows = []
    for src, d in sorted(diag.get("by_source", {}).items()):
        c = d.get("curated") or {}
        moved = d.get("further_from_half_points")
        rows.append(
            {
                "build": name,
                "source": src,
                "raw": pct(d["raw"]["share"]),
                "curated": pct(c.get("share")),
                "curated weighted": pct(c.get("weighted_share")),
                "further from 50 % (points)": "-" if moved is None else f"{moved:+.1f}",
                "warning": "yes"
                if moved is not None and moved > diag.get("warn_points", WARN_POINTS)
                else "",
            }
        )
    return rows
