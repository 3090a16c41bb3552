"""Label-noise detection by the cross-fitted preference strength, with the length control off and on.

One command (from the repository root; CPU defaults):

    .venv/bin/python benchmarks/noise/bench.py [--seed 0] [--folds 5] [--head logistic] [--work DIR]

Sets (real data under ../shared/data): HH-RLHF harmless test pairs with 20 % and with 40 % of the labels
flipped, the LLaMA-Factory dpo demo (ShareGPT pairs) with 20 %, and the AlpacaEval annotation pairs of
the three gpt-3.5-turbo-1106 files (concise, default, verbose; the alpaca_eval reader makes the pairs)
with 20 %. Flips are seeded (``--seed``): a flipped row has chosen and rejected swapped (AlpacaEval:
preference p -> 3 - p) in a copy of the file, which is ingested into its own store under ``--work``.

Per set, ``reward_margin --backend crossfit`` (out of fold by prompt hash) runs in three settings on
the same embeddings: ``off`` (``length_control=false``: version 1's margins and classes), ``on`` (the
default: product-of-experts head + classes within length strata) and ``on_global`` (the product of
experts with classes over all pairs, ``length_strata=0``: what the head alone does). Metrics, with
score = -margin for "flipped":
- ``auroc``: flip-detection AUROC;
- ``stratified_auroc``: the mean of the AUROCs within the length strata (sign of len_chosen -
  len_rejected x quintiles of its size), so that the length difference alone scores about 0.5;
  ``stratified_auroc_10_bins``: the same with deciles (narrower strata leave length less to tell);
- ``length_matched_auroc``: the mean of the AUROCs within strata of what the length features can tell
  (sign of the length difference x quintiles of the cross-fitted length-features head's score, the
  baseline below): a second try at a length-blind comparison, since the length-difference strata leave
  length some power (the length-features head scores 0.54 within them on HH). It is not length-blind
  either: on AlpacaEval the length-features head scores 0.62 within its own quintiles (the flips sit at
  the ends of each bin), so read it beside the first, not instead of it;
- ``chosen_longer_flagged`` against ``chosen_longer_all``: the share of pairs whose chosen response is
  longer (tokens) among those classed ``incorrect`` and among all; target: within 5 points;
- ``precision_flagged``: the share of flipped pairs among those classed ``incorrect`` (20 % of pairs);
  ``precision_at_flag_rate``: the same for the 20 % lowest margins over all pairs;
and the baselines: random scores, the length difference itself (score = len_diff, as in version 1 of
this benchmark), and a Bradley-Terry head on the length features alone, cross-fitted on the same
folds (what length can tell in the direction each data set leans to).

Embeddings are cached per text in each store; flipping only swaps texts, so the bench links the
embedding chunks any store under ``--work`` already holds into a new store before scoring (hard links,
inside the store: scores/cache/embeddings/<key>/chunk-*.parquet). The first run embeds ~11k texts
(30-60 min on 2 busy cores); later runs take minutes. Results go to --out (JSON) and are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))
if not DATA.is_dir():
    DATA = Path("/work/shared/data")

#: name -> (files relative to the data folder, reader, flip rates)
SETS: dict[str, tuple[list[str], str, list[float]]] = {
    "hh_harmless": (["hh-rlhf/harmless-base-test.jsonl.gz"], "hh", [0.2, 0.4]),
    "llamafactory_dpo": (["llama-factory/dpo_en_demo.json"], "sharegpt_pair", [0.2]),
    "alpaca_eval": (
        [
            "alpaca-eval/gpt-3.5-turbo-1106.annotations.json",
            "alpaca-eval/gpt-3.5-turbo-1106_concise.annotations.json",
            "alpaca-eval/gpt-3.5-turbo-1106_verbose.annotations.json",
        ],
        "alpaca_eval",
        [0.2],
    ),
}
SETTINGS = {"off": {"length_control": False}, "on": {}, "on_global": {"length_strata": 0}}


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as fh:
            return [json.loads(line) for line in fh]
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def flipped(row: dict, reader: str) -> dict:
    """The row with its preference reversed."""
    if reader == "alpaca_eval":
        return row | {"preference": 3.0 - row["preference"]}
    return row | {"chosen": row["rejected"], "rejected": row["chosen"]}


def prepare(work: Path, name: str, rate: float, seed: int):
    """Store with the flipped copies ingested; {(copy file name, row): flipped?}."""
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    files, reader, _ = SETS[name]
    rows = [(f, r) for f in files for r in read_rows(DATA / f)]
    flip = np.random.default_rng(seed).random(len(rows)) < rate
    folder = work / f"{name}_flip{rate:g}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    copies, truth, i = [], {}, 0
    for f in files:
        base = Path(f).name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
        copy = folder / f"{base}.flip{rate:g}.jsonl"
        n = 0
        with open(copy, "w") as fh:
            for src, row in rows:
                if src != f:
                    continue
                fh.write(json.dumps(flipped(row, reader) if flip[i] else row) + "\n")
                truth[(copy.name, n)] = bool(flip[i])
                i, n = i + 1, n + 1
        copies.append(str(copy))
    st = Store(folder / "store")
    ingest_paths(st, copies, IngestOptions(reader=reader, source=name))
    return st, truth, int(flip.sum()), len(rows)


def share_embeddings(work: Path, st) -> int:
    """Hard-link the embedding chunks of other stores under ``work`` into ``st``'s cache (each file once)."""
    linked = 0
    for src in sorted(work.glob("**/scores/cache/embeddings/*")):
        if st.root in src.parents or not (src / "meta.json").exists():
            continue
        dst = st.root / "scores" / "cache" / "embeddings" / src.name
        dst.mkdir(parents=True, exist_ok=True)
        if not (dst / "meta.json").exists():
            os.link(src / "meta.json", dst / "meta.json")
        have = {p.stat().st_ino for p in dst.glob("chunk-*.parquet")}
        n = len(have)
        for chunk in sorted(src.glob("chunk-*.parquet")):
            if chunk.stat().st_ino not in have:
                os.link(chunk, dst / f"chunk-{n:06d}.parquet")
                have.add(chunk.stat().st_ino)
                n, linked = n + 1, linked + 1
    return linked


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def stratified_auroc(y: np.ndarray, score: np.ndarray, len_diff: np.ndarray, bins: int = 5) -> float:
    """Mean AUROC within (sign of the length difference x quantile bin of its size) strata."""
    from curation.scoring.reward_margin import length_stratum

    return auroc_within(y, score, length_stratum(len_diff, bins))


def matched_strata(len_diff: np.ndarray, length_score: np.ndarray, bins: int = 5) -> np.ndarray:
    """Stratum per pair: the sign of the length difference x quantile bins of ``length_score`` (what the
    length features predict) within that sign."""
    out = np.zeros(len(len_diff), dtype=np.int64)
    for k, side in enumerate((len_diff < 0, len_diff == 0, len_diff > 0)):
        s = length_score[side]
        edges = np.quantile(s, np.linspace(0, 1, bins + 1)[1:-1]) if len(s) else np.zeros(0)
        out[side] = k * bins + np.searchsorted(edges, s, side="right")
    return out


def auroc_within(y: np.ndarray, score: np.ndarray, strata: np.ndarray) -> float:
    """Mean AUROC over the strata that hold both classes."""
    vals = []
    for s in np.unique(strata):
        m = strata == s
        if 0 < y[m].sum() < m.sum():  # a stratum with both classes
            vals.append(auroc(y[m], score[m]))
    return float(np.mean(vals))


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC from ranks (ties get mid-ranks); nan without both classes."""
    from scipy.stats import rankdata

    n1 = int(y.sum())
    n0 = len(y) - n1
    if not n1 or not n0:
        return float("nan")
    return float((rankdata(score)[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def stratified_gain_ci(y, on, off, strata: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95 % paired-bootstrap interval of stratified AUROC(on) - stratified AUROC(off) (strata fixed)."""
    groups = [np.nonzero(strata == s)[0] for s in np.unique(strata)]
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n_boot):
        diffs = []
        for g in groups:
            b = rng.choice(g, len(g))
            diffs.append(_auc(y[b], on[b]) - _auc(y[b], off[b]))
        gains.append(np.nanmean(diffs))
    return [float(np.quantile(gains, 0.025)), float(np.quantile(gains, 0.975))]


def precision_at(score: np.ndarray, y: np.ndarray, frac: float) -> float:
    k = max(1, int(round(frac * len(score))))
    return float(y[np.argsort(-score, kind="stable")[:k]].mean())


def ranking_metrics(y: np.ndarray, score: np.ndarray, len_diff: np.ndarray, matched: np.ndarray) -> dict:
    return {
        "auroc": auroc(y, score),
        "stratified_auroc": stratified_auroc(y, score, len_diff),
        "stratified_auroc_10_bins": stratified_auroc(y, score, len_diff, 10),
        "length_matched_auroc": auroc_within(y, score, matched),
        "precision_at_flag_rate": precision_at(score, y, 0.2),
    }


def length_only_scores(store, folds: int) -> dict[str, float]:
    """-margin of a Bradley-Terry head on the length features alone, out of fold (folds by prompt)."""
    from curation.scoring.crossfit import _fit_logistic, _rms_scale, fold_of
    from curation.scoring.reward_margin import length_inputs
    from curation.scoring.texts import load_records, plain_render
    from schemas.ids import text_id

    records = load_records(store, "pair")
    with store.writer_lock("bench length features"):
        feats, _ = length_inputs(store, records, progress=False)
    fold = fold_of([text_id(plain_render(r["prompt"])) for r in records], folds, 0)
    mu = np.empty(len(records))
    for k in range(folds):
        test = fold == k
        if test.any():
            scale = _rms_scale(feats[~test])
            mu[test] = _fit_logistic(feats[~test] / scale, 1.0, k)(feats[test] / scale)
    return {r["id"]: -m for r, m in zip(records, mu, strict=True)}


def bench_set(work: Path, name: str, rate: float, args) -> dict:
    from curation import catalog
    from curation.scoring import run_scorer

    t0 = time.perf_counter()
    st, truth, n_flipped, n_rows = prepare(work, name, rate, args.seed)
    linked = share_embeddings(work, st)
    run_scorer(st, "length_bias", progress=False)
    out: dict = {"rows_in_files": n_rows, "flipped_in_files": n_flipped, "embedding_chunks_linked": linked}
    out["settings"], margins = {}, {}
    by_id = length_only_scores(st, args.folds)
    for setting, params in SETTINGS.items():
        t = time.perf_counter()
        s = run_scorer(
            st, "reward_margin", backend="crossfit", folds=args.folds, head=args.head, progress=True, **params
        )
        with contextlib.closing(catalog.connect(st)) as con:
            rows = con.sql(
                "SELECT id, margin, margin_raw, quality_class, len_diff, source_file, source_row "
                "FROM scored_pairs ORDER BY id"
            ).fetchall()
        ids = [r[0] for r in rows]
        mu = np.array([r[1] for r in rows], dtype=float)
        cls = np.array([r[3] for r in rows])
        len_diff = np.array([r[4] for r in rows], dtype=float)
        y = np.array([truth[(Path(r[5]).name, r[6])] for r in rows])
        flagged = cls == "incorrect"
        margins[setting] = mu
        length_score = np.array([by_id[i] for i in ids])
        matched = matched_strata(len_diff, length_score)
        res = ranking_metrics(y, -mu, len_diff, matched) | {
            "flagged": int(flagged.sum()),
            "precision_flagged": float(y[flagged].mean()),
            "chosen_longer_all": float((len_diff > 0).mean()),
            "chosen_longer_flagged": float((len_diff[flagged] > 0).mean()),
            "seconds": round(time.perf_counter() - t, 1),
            "embeddings_cached": s.cached,
            "embeddings_computed": s.computed,
        }
        res["flagged_share_gap_points"] = 100 * (res["chosen_longer_flagged"] - res["chosen_longer_all"])
        out["settings"][setting] = res
        print(name, rate, setting, json.dumps({k: round(v, 3) for k, v in res.items()}), flush=True)
    out["pairs_scored"], out["flipped_scored"] = len(y), int(y.sum())
    rnd = np.random.default_rng(args.seed + 1).random(len(y))
    out["baselines"] = {
        "random": ranking_metrics(y, rnd, len_diff, matched),
        "length_diff": ranking_metrics(y, len_diff, len_diff, matched),
        "length_features_head": ranking_metrics(y, length_score, len_diff, matched),
    }
    on, off = out["settings"]["on"], out["settings"]["off"]
    from curation.scoring.reward_margin import length_stratum

    for key, strata in (("stratified_auroc", length_stratum(len_diff, 5)), ("length_matched_auroc", matched)):
        out[f"{key}_gain_on_minus_off_ci95"] = stratified_gain_ci(
            y, -margins["on"], -margins["off"], strata, seed=args.seed
        )
    out["targets"] = {
        "on_flagged_share_within_5_points": abs(on["flagged_share_gap_points"]) <= 5,
        "on_global_flagged_share_within_5_points": abs(
            out["settings"]["on_global"]["flagged_share_gap_points"]
        )
        <= 5,
        "on_stratified_auroc_at_least_off": on["stratified_auroc"] >= off["stratified_auroc"],
        "on_length_matched_auroc_at_least_off": on["length_matched_auroc"] >= off["length_matched_auroc"],
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(name, rate, "baselines", json.dumps(out["baselines"]), out["targets"], flush=True)
    return out


def machine() -> dict:
    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    return {"lscpu": sh("lscpu | head"), "cores": os.cpu_count(), "uptime": sh("uptime")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="hh_harmless,llamafactory_dpo,alpaca_eval")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--head", default="logistic")
    ap.add_argument("--work", default="/tmp/curate_noise_bench")
    ap.add_argument("--out", default=str(REPO / "benchmarks/noise/results.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": " ".join(["python", *sys.argv]), "machine_at_start": machine(), "sets": {}}
    t0 = time.perf_counter()
    for name in args.sets.split(","):
        for rate in SETS[name][2]:
            results["sets"][f"{name}_flip{rate:g}"] = bench_set(work, name, rate, args)
    results["seconds_total"] = round(time.perf_counter() - t0, 1)
    results["machine_at_end"] = {"uptime": machine()["uptime"]}
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
