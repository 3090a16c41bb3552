"""Cost of finding keys given twice in JSON objects (docs/reliability.md, "Round three: data", row 14).

Two code trees (``--roots``: the tree before the check, then the tree with it) ingest the same files, each
run in its own child process with that tree first on ``sys.path``, the trees interleaved, best of
``--repeat`` (wall and CPU seconds):

- ``--rows`` synthetic HH pairs (``synth.write_synthetic``, JSONL, 1.41 KB a row) with ``block_path`` on
  (the Arrow path: pyarrow.json refuses a repeated key itself, so nothing is added there) and off (the
  line path: orjson, then the count of key ends against the keys parsed, on every row);
- the real JSON arrays of ``../shared/data`` (DPO, Alpaca, AlpacaEval annotations), read whole.

    python benchmarks/ingest/dupkey_prefilter.py --roots /tmp/before,$PWD --rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
HERE = Path(__file__).resolve().parent
JSON_FILES = [
    "llama-factory/dpo_en_demo.json",
    "llama-factory/alpaca_en_demo.json",
    "alpaca-eval/gpt-3.5-turbo-1106.annotations.json",
]


def child(root: str, file: str, block_path: bool) -> None:
    """Ingest ``file`` into a fresh store with the code of ``root``; print wall and CPU seconds."""
    sys.path.insert(0, root)
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    with tempfile.TemporaryDirectory() as tmp:
        opts = IngestOptions(block_path=block_path)
        t0, c0 = time.perf_counter(), time.process_time()
        (res,) = ingest_paths(Store(Path(tmp) / "store"), [file], opts)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert res.error is None, res.error
    import curation

    assert Path(curation.__file__).is_relative_to(root), curation.__file__
    print(json.dumps({"wall": wall, "cpu": cpu, "rows": res.rows_read, "quarantined": res.quarantined}))


def decode_only(roots: list[str], lines: list[bytes], repeat: int) -> dict[str, float]:
    """CPU seconds of ``sources.decode_line`` over ``lines`` with each tree's code (best of ``repeat``)."""
    import importlib.util

    decode = {}
    for k, root in enumerate(roots):
        spec = importlib.util.spec_from_file_location(f"sources_{k}", f"{root}/curation/ingest/sources.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[spec.name] = module  # type: ignore[union-attr]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        decode[root] = module.decode_line
    best = dict.fromkeys(roots, float("inf"))
    for _ in range(repeat):
        for root in roots:
            f, t0 = decode[root], time.process_time()
            for i, line in enumerate(lines):
                f(line, i)
            best[root] = min(best[root], time.process_time() - t0)
    return best


def run(root: str, file: str, block_path: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": root, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", root, file, str(int(block_path))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--roots", help="before,after: two checkouts of curate (required)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_ingest"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root, file, block = args.child
        child(root, file, block == "1")
        return
    sys.path.insert(0, str(HERE))
    from synth import write_synthetic

    if not args.roots:
        ap.error("--roots is required")
    roots = args.roots.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    synth = args.work / f"hh_synth_{args.rows}.jsonl"
    if not synth.exists():
        write_synthetic(SHARED / "hh-rlhf/harmless-base-test.jsonl.gz", synth, args.rows)
    cases = [(str(synth), True), (str(synth), False)] + [(str(SHARED / f), False) for f in JSON_FILES]
    print(f"# {os.uname().nodename}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| file | path | rows | before wall / CPU s | after wall / CPU s | CPU change |")
    print("|---|---|---:|---:|---:|---:|")
    for file, block in cases:
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for root in roots:
                r = run(root, file, block)
                if root not in best or r["cpu"] < best[root]["cpu"]:
                    best[root] = r
        a, b = (best[r] for r in roots)
        print(
            f"| {Path(file).name} | {'Arrow' if block else 'line/array'} | {a['rows']} | "
            f"{a['wall']:.2f} / {a['cpu']:.2f} | {b['wall']:.2f} / {b['cpu']:.2f} | "
            f"{100 * (b['cpu'] / a['cpu'] - 1):+.1f} % |",
            flush=True,
        )
    lines = [x for x in synth.read_bytes().splitlines() if x.strip()]
    a, b = decode_only(roots, lines, args.repeat + 2).values()
    print(
        f"| {synth.name} | decode_line only | {len(lines)} | - / {a:.2f} | - / {b:.2f} | {100 * (b / a - 1):+.1f} % |"
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"# largest child peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
