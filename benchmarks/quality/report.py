"""RESULTS.md and one PNG per experiment from the ``results-<n>.json`` files of a results folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

NOTES_FILE = "NOTES.md"  # hand-written interpretation, included verbatim when present


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def load_results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("results-*.json"))]


def table(results: list[dict]) -> str:
    lines = [
        "| experiment | arm | setting | metric | mean ± std | per seed | seeds | train rows | wall time | machine "
        "| command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        m = res["machine"]
        where = (
            f"{m['nproc']} CPU"
            + ("" if m["gpu"] == "none" else f", {m['gpu']}")
            + f", load {m['load_average'].split()[-1]}"
        )
        for r in res["rows"]:
            per_seed = ", ".join(_fmt(v) for v in r["values"])
            n = r.get("extra", {}).get("train_pairs", r.get("extra", {}).get("train_samples", ""))
            if isinstance(n, list):
                n = "/".join(str(x) for x in n)
            lines.append(
                f"| {r['experiment']} | {r['arm']} | {r['setting']} | {r['metric']} | "
                f"{_fmt(r['mean'])} ± {_fmt(r['std'])} | {per_seed} | {', '.join(map(str, r['seeds']))} | {n} | "
                f"{r['wall_seconds'] / 60:.1f} min | {where} | `{r['command']}` |"
            )
    return "\n".join(lines)


def length_table(results: list[dict]) -> str:
    """The chosen-longer share (characters) of each rm arm's train shard next to the raw pairs', per source."""
    lines = [
        "| experiment | arm | setting | source | raw | train shard | train shard, weighted |",
        "|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for res in results:
        for r in res["rows"]:
            extra = r.get("extra", {})
            shares = extra.get("chosen_longer") or next(
                (s["chosen_longer"] for s in extra.get("per_seed", []) if "chosen_longer" in s), None
            )
            key = (r["experiment"], r["arm"], r["setting"])
            if not shares or key in seen:
                continue
            seen.add(key)
            for src, d in shares.items():
                lines.append(
                    f"| {r['experiment']} | {r['arm']} | {r['setting']} | {src} | {_fmt(d['raw'])} | "
                    f"{_fmt(d['train'])} | {_fmt(d['train_weighted'])} |"
                )
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(res: dict, path: Path) -> Path | None:
    """Bars (mean, std error bars, seed dots) per arm, grouped by setting, one panel per metric."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = res["rows"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1, 3.6), squeeze=False)
    width = 0.8 / max(1, len(arms))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for j, arm in enumerate(arms):
            labelled = False
            for i, setting in enumerate(settings):
                hit = [
                    r for r in rows if r["metric"] == metric and r["arm"] == arm and r["setting"] == setting
                ]
                if not hit:
                    continue
                r = hit[0]
                x = i + (j - (len(arms) - 1) / 2) * width
                ax.bar(
                    x,
                    r["mean"],
                    width * 0.9,
                    yerr=r["std"],
                    capsize=3,
                    color=f"C{j}",
                    label=None if labelled else arm,
                )
                labelled = True
                ax.scatter([x] * len(r["values"]), r["values"], s=8, color="black", zorder=3)
        ax.set_xticks(range(len(settings)), settings, fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(rows[0]["experiment"] + (" (tiny)" if res.get("tiny") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(folder: Path, failures: dict[str, str] | None = None) -> Path:
    """(Re)write ``<folder>/RESULTS.md`` and the plots from every results file in the folder."""
    results = load_results(folder)
    parts = [
        "# Quality experiments: does curation pay?",
        "",
        "Regenerate everything with `.venv/bin/python benchmarks/quality/run.py` (one experiment: `--only N`; "
        "the smoke version the tests run: `--tiny --out <folder>`). Numbers are means ± sample std over the "
        "seeds listed; wall time is per row, summed over seeds (training + evaluation, plus the row's share "
        "of scoring and building). This file is generated by benchmarks/quality/report.py; the discussion "
        f"comes from {NOTES_FILE} next to it.",
        "",
    ]
    notes = folder / NOTES_FILE
    if notes.exists():
        parts += [notes.read_text().strip(), ""]
    parts += ["## Results", "", table(results), ""]
    lengths = length_table(results)
    if lengths:
        parts += [
            "### Chosen-longer share of each arm's rm train shard",
            "",
            "Characters of the assistant turns, ties left out, first seed's build (the policy's drops, flips "
            "and weights; `length_diagnostics` of the build's manifest). Experiment 2 reports the trainer's own "
            "token-based share (`train_chosen_longer_share`) in its per-row details.",
            "",
            lengths,
            "",
        ]
    for res in results:
        png = plot(res, folder / f"exp{res['experiment']}.png")
        m = res["machine"]
        parts += [
            f"### Experiment {res['experiment']}" + (" (tiny smoke run)" if res.get("tiny") else ""),
            "",
            f"- finished {res['finished']}, {res['wall_seconds'] / 60:.1f} min in all",
            f"- machine: {m['cpu']}, {m['nproc']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
            f"GPU: {m['gpu']}, load average at the end {m['load_average']}",
            f"- sizes: `{json.dumps(res['sizes'], default=str)}`",
        ]
        if res.get("assembled_from_logs"):
            parts.append(
                "- assembled by benchmarks/quality/from_log.py from the per-training lines of the run logs "
                f"{res['assembled_from_logs']} (the run was cut or split across processes); seeds per row as listed"
            )
        extras = {r["arm"] + " / " + r["setting"]: r.get("extra", {}) for r in res["rows"]}
        parts += [
            "",
            "<details><summary>per-row details</summary>",
            "",
            "```json",
            json.dumps(extras, indent=1, default=str)[:20000],
            "```",
            "</details>",
            "",
        ]
        if png:
            parts += [f"![experiment {res['experiment']}]({png.name})", ""]
    if failures:
        parts += ["## Experiments that did not finish", ""]
        parts += [f"- experiment {n}: {msg}" for n, msg in failures.items()]
        parts.append("")
    out = folder / "RESULTS.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return out
