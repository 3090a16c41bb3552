"""Chosen-longer share per source, raw against the rm shards, for the default policy with and without
``balance_length`` (the 2-point rule of issue 22), on a scored store.

    .venv/bin/curate demo --store /tmp/demo          # ingest + every scorer + build (about 5-10 minutes)
    .venv/bin/python benchmarks/curate_build/length_shares.py /tmp/demo

Builds in that store ``ls-default`` (the bundled default), ``ls-unbalanced`` (balance_length off), and,
to tell the two pulls apart, ``ls-no-flip`` (unbalanced, incorrect pairs kept as labelled) and
``ls-no-filter`` (unbalanced, without the length-explained filter); prints one markdown row per build
and source from the manifests' ``length_diagnostics`` (recomputing every share from the shard files in
plain Python as a check), then the raw share per quality class.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def _text(messages) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "assistant")


def _shard_share(folder: Path, manifest: dict, source: str, weighted: bool) -> float:
    longer = untied = 0.0
    for s in manifest["shards"]:
        if s["consumer"] != "rm":
            continue
        for r in pq.read_table(folder / s["path"]).to_pylist():
            if r["source"] != source:
                continue
            d = len(_text(r["chosen"])) - len(_text(r["rejected"]))
            w = r["weight"] if weighted else 1.0
            untied += w if d else 0.0
            longer += w if d > 0 else 0.0
    return longer / untied


def main(store_path: str) -> None:
    from curation.builds.build import build
    from curation.builds.policy import bundled_policy, load_policy, parse_policy
    from curation.core.store import Store

    store = Store(store_path, create=False)
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    off = json.loads(json.dumps(data))
    off["consumers"]["rm"]["balance_length"] = False
    no_flip = json.loads(json.dumps(off))
    no_flip["consumers"]["rm"]["remedies"]["incorrect"] = "keep"
    no_filter = json.loads(json.dumps(off))
    no_filter["consumers"]["rm"]["filters"] = []
    variants = {"ls-default": data, "ls-unbalanced": off, "ls-no-flip": no_flip, "ls-no-filter": no_filter}
    print("| build | source | raw | rm shards | rm shards, weighted | further from 50 % (points) | warning |")
    print("|---|---|---|---|---|---|---|")
    by_class = {}
    for name, pol in variants.items():
        res = build(store, parse_policy(pol), name=name)
        diag = res.manifest["length_diagnostics"]
        for src, d in sorted(diag["by_source"].items()):
            c = d["curated"]
            for key, weighted in (("share", False), ("weighted_share", True)):
                check = _shard_share(res.path, res.manifest, src, weighted)
                assert abs(check - c[key]) < 1e-6, (name, src, key, check, c[key])
            warned = any(w.startswith(f"rm source {src!r}") for w in diag["warnings"])
            by_class[src] = d.get("raw_by_class", {})
            print(
                f"| {name} | {src} | {100 * d['raw']['share']:.1f} % of {d['raw']['pairs']} | "
                f"{100 * c['share']:.1f} % of {c['pairs']} | {100 * c['weighted_share']:.1f} % | "
                f"{d['further_from_half_points']:+.1f} | {'yes' if warned else ''} |"
            )
    print("\n| source | " + " | ".join(f"raw, {c}" for c in ("incorrect", "ambiguous", "clean")) + " |")
    print("|---|---|---|---|")
    for src, classes in sorted(by_class.items()):
        cells = [classes.get(c) for c in ("incorrect", "ambiguous", "clean")]
        shown = [f"{100 * x['share']:.1f} % of {x['pairs']}" if x else "-" for x in cells]
        print(f"| {src} | " + " | ".join(shown) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
