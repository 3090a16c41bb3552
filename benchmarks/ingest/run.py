"""Ingest benchmark: `curate ingest` against the bare polars limit and Hugging Face datasets, on one file.

One command writes a synthetic HH-RLHF-shaped preference JSONL (turn counts and
lengths drawn from the real file, see synth.py), then times in separate child
processes, on that same file:

  curate      `curate ingest FILE --store S --no-near-dedup` (read, normalise, hash, validate, dedup, write)
  curate-30%  the same on the first 30 % of the file (does peak memory grow with the input? 30 % is
              15 batches of 50k rows, enough to fill the pipeline of threads)
  polars      polars.read_ndjson(FILE).write_parquet(OUT)          (the bare limit: parse + write)
  datasets    datasets.load_dataset("json", data_files=FILE)["train"].to_parquet(OUT)

With --input parquet the same rows are first written once as Parquet (the form most
hub datasets come in), and the methods read that file: polars.read_parquet,
load_dataset("parquet"); results then go to RESULTS-parquet.md.

and near-duplicate detection over the ingested prompts: curation.ingest.dedup (rensa
MinHash LSH, verified candidates, union-find clusters) against a plain
datasketch MinHash + MinHashLSH with the same shingles and banding.

Each child reports wall seconds and its peak RSS (ru_maxrss). Results go to
benchmarks/ingest/RESULTS.md with the machine description and its load.

    .venv/bin/python benchmarks/ingest/run.py --rows 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
if not HH.exists():
    HH = REPO / "curation" / "data" / "demo" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def peak_mb() -> float:
    """This process's peak RSS. From /proc (VmHWM of this program's memory): Linux's ru_maxrss keeps the
    parent's peak across fork and exec, so a child started by a large parent would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """CPU seconds (user + system, all threads) of this process so far: less disturbed by other load than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(method: str, file: Path, work: Path, near_rows: int) -> dict:
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    c0 = cpu_s()
    out: dict = {}
    if method.startswith("curate"):
        from curation.cli import app, configure_allocators

        if not configure_allocators():  # what the `curate` command does first
            raise SystemExit("polars was imported before the allocator settings of `curate`")

        shutil.rmtree(work / "store", ignore_errors=True)
        t0, c0 = time.perf_counter(), cpu_s()
        app(["ingest", str(file), "--store", str(work / "store"), "--no-near-dedup"], standalone_mode=False)
    elif method == "polars":
        import polars as pl

        t0, c0 = time.perf_counter(), cpu_s()
        (pl.read_parquet if file.suffix == ".parquet" else pl.read_ndjson)(file).write_parquet(
            work / "polars.parquet"
        )
    elif method == "datasets":
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        import datasets

        datasets.disable_progress_bars()
        shutil.rmtree(work / "hf_cache", ignore_errors=True)
        t0, c0 = time.perf_counter(), cpu_s()
        builder = "parquet" if file.suffix == ".parquet" else "json"
        ds = datasets.load_dataset(builder, data_files=str(file), cache_dir=str(work / "hf_cache"))["train"]
        ds.to_parquet(str(work / "datasets.parquet"))
    elif method in ("near", "datasketch"):
        out.update(near(method, work, near_rows))
        return {**out, "peak_mb": peak_mb()}
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = cpu_s() - c0
    out["peak_mb"] = peak_mb()
    return out


def prompt_texts(work: Path, n: int) -> list[str]:
    from curation.core.store import Store
    from curation.ingest.dedup import prompt_texts_sql

    con = Store(work / "store", create=False).connect()
    try:
        return [t or "" for _, t in con.sql(prompt_texts_sql("pair") + f" LIMIT {n}").fetchall()]
    finally:
        con.close()


def near(method: str, work: Path, n: int) -> dict:
    from curation.ingest.dedup import MinHashParams, near_duplicate_clusters, shingles

    texts = prompt_texts(work, n)
    params = MinHashParams()
    t0 = time.perf_counter()
    if method == "near":
        roots, _ = near_duplicate_clusters(texts, params)
        dup = int(sum(int(r) != i for i, r in enumerate(roots)))
    else:
        from datasketch import MinHash, MinHashLSH

        r = params.num_perm // params.bands
        lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, params=(params.bands, r))
        hashes = []
        for i, t in enumerate(texts):
            m = MinHash(num_perm=params.num_perm, seed=params.seed)
            m.update_batch([s.encode() for s in shingles(t, params.shingle)])
            lsh.insert(i, m)
            hashes.append(m)
        dup_set = set()
        for i, m in enumerate(hashes):
            for j in lsh.query(m):
                if j > i and m.jaccard(hashes[j]) >= params.threshold:
                    dup_set.add(j)
        dup = len(dup_set)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "docs": len(texts),
        "docs_per_s": len(texts) / seconds,
        "near_duplicates": dup,
    }


def run_child(method: str, file: Path, work: Path, near_rows: int, threads: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--file", str(file), "--work", str(work)]
    cmd += ["--near-rows", str(near_rows)]
    # the same thread count for every method (OMP_NUM_THREADS also caps Arrow's pool); curate overlaps its
    # stages on threads only when polars may use more than one (curation/ingest/overlap.py)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "POLARS_MAX_THREADS": str(threads),
        "RAYON_NUM_THREADS": str(threads),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = wall
    return res


def head_file(src: Path, dst: Path, rows: int) -> Path:
    """The first ``rows`` lines of ``src`` (written once, under a temporary name until complete)."""
    if not dst.exists():
        tmp = dst.with_name(dst.name + ".tmp")
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            for i, line in enumerate(fi):
                if i >= rows:
                    break
                fo.write(line)
        os.replace(tmp, dst)
    return dst


def parquet_copy(src: Path, dst: Path, rows: int | None = None) -> Path:
    """The first ``rows`` rows (all if None) of the JSONL ``src`` as Parquet (written once, atomically)."""
    if not dst.exists():
        import polars as pl

        tmp = dst.with_name(dst.name + ".tmp")
        frame = pl.scan_ndjson(src)
        (frame if rows is None else frame.head(rows)).sink_parquet(tmp)
        os.replace(tmp, dst)
    return dst


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False).stdout.strip()


def _percent(method: str) -> int | None:
    """30 for 'curate-30%' (the method on the first 30 % of the file), else None."""
    if method.startswith("curate-") and method.endswith("%"):
        return int(method.removeprefix("curate-").removesuffix("%"))
    return None


def _rows(method: str, rows: int) -> int:
    pct = _percent(method)
    return rows if pct is None else rows * pct // 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--near-rows", type=int, default=100_000, help="prompts for the near-dup timing")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_ingest"))
    ap.add_argument(
        "--input", choices=("jsonl", "parquet"), default="jsonl", help="the file format all methods read"
    )
    ap.add_argument("--out", type=Path, help="default: RESULTS.md (RESULTS-parquet.md with --input parquet)")
    ap.add_argument("--methods", default="polars,datasets,curate-30%,curate,near,datasketch")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds over the methods (round-robin, sync before each child); each method reports its median run",
    )
    ap.add_argument(
        "--threads",
        default=f"1,{os.cpu_count()}",
        help="thread counts to compare at (every method gets the same count); near-dup runs at the first",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.file, args.work, args.near_rows)))
        return

    sys.path.insert(0, str(REPO))
    from benchmarks.ingest.synth import write_synthetic

    args.work.mkdir(parents=True, exist_ok=True)
    file = args.work / f"hh_synth_{args.rows}.jsonl"
    if not file.exists():
        t0 = time.perf_counter()
        write_synthetic(HH, file, args.rows)
        print(f"wrote {file} ({file.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    parts = {
        m: head_file(file, args.work / f"hh_synth_{args.rows}_head{_percent(m)}.jsonl", _rows(m, args.rows))
        for m in args.methods.split(",")
        if _percent(m)
    }
    if args.input == "parquet":
        parts = {m: parquet_copy(f, f.with_suffix(".parquet")) for m, f in parts.items()}
        file = parquet_copy(file, file.with_suffix(".parquet"))
    args.out = args.out or Path(__file__).with_name(
        "RESULTS-parquet.md" if args.input == "parquet" else "RESULTS.md"
    )
    load_before = sh("uptime")
    counts = sorted({int(t) for t in args.threads.split(",")})
    runs: dict[tuple[int, str], list[dict]] = {}
    for _ in range(max(1, args.repeat)):  # round-robin, so drifting machine state hits every method alike
        for threads in counts:
            for method in args.methods.split(","):
                if method in ("near", "datasketch") and threads != counts[0]:
                    continue
                f = parts.get(method, file)
                work = args.work / method.replace("%", "")
                work.mkdir(exist_ok=True)
                if method in ("near", "datasketch"):
                    work = args.work / "curate"
                os.sync()  # the previous child's written files are not flushed on this child's time
                runs.setdefault((threads, method), []).append(
                    run_child(method, f, work, args.near_rows, threads)
                )
                print(threads, method, runs[threads, method][-1], flush=True)
    results = {}
    for key, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["seconds"])
        results[key] = rs[len(rs) // 2] | {"all_seconds": [round(r["seconds"], 1) for r in runs[key]]}
    load_after = sh("uptime")
    write_results(args, file, results, load_before, load_after)


def write_results(
    args, file: Path, results: dict[tuple[int, str], dict], load_before: str, load_after: str
) -> None:
    rows = args.rows
    lines = [
        "# Ingest benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/ingest/run.py {shlex.join(sys.argv[1:])}`  ",
        f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}  ",
        f"Input: synthetic HH-RLHF-shaped preference {args.input.upper()}, {rows:,} rows, "
        f"{file.stat().st_size / 1e6:.0f} MB "
        "(turn counts and lengths drawn from hh-rlhf/harmless-base-test; see synth.py)  ",
        f"Python {platform.python_version()}; each method in its own child process, every method with the "
        "same thread count (OMP_NUM_THREADS=POLARS_MAX_THREADS=RAYON_NUM_THREADS=threads); ratios are "
        "against polars at the same thread count; "
        "seconds = wall time of the work inside the child (imports excluded), process = whole child process, "
        "CPU s = user + system CPU time of that work (less disturbed by other load than wall time). "
        f"Each method ran {args.repeat} times, round-robin; the table shows its median run (by seconds) and "
        "every run's seconds; the last column divides each round's run by polars' run of the same round (the "
        "machine's speed drifts between rounds).",
        "",
        "| threads | method | rows | seconds | process s | CPU s | rows/s | peak RSS MB | vs polars (wall) "
        "| vs polars (CPU) | all runs (s) | vs polars in each round (wall) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for (threads, m), r in results.items():
        if m in ("near", "datasketch"):
            continue
        base = results.get((threads, "polars"), {}).get("seconds")
        base_cpu = results.get((threads, "polars"), {}).get("cpu_seconds")
        n = _rows(m, rows)
        ratio = f"{r['seconds'] / base:.2f}x" if base and n == rows else ""
        cratio = f"{r['cpu_seconds'] / base_cpu:.2f}x" if base_cpu and n == rows else ""
        base_runs = results.get((threads, "polars"), {}).get("all_seconds", [])
        rounds = (
            " / ".join(f"{a / b:.2f}x" for a, b in zip(r["all_seconds"], base_runs, strict=False))
            if n == rows and m != "polars"
            else ""
        )
        lines.append(
            f"| {threads} | {m} | {n:,} | {r['seconds']:.1f} | {r['process_seconds']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{n / r['seconds']:,.0f} | {r['peak_mb']:,.0f} | {ratio} | {cratio} | "
            f"{' / '.join(str(x) for x in r['all_seconds'])} | {rounds} |"
        )
    near = {m: r for (_, m), r in results.items() if m in ("near", "datasketch")}
    if near:
        lines += [
            "",
            "Near-duplicate prompts (MinHash, 128 permutations, word 3-gram shingles, threshold 0.8, 16 bands x 8 rows):",
            "",
            "| method | docs | seconds | docs/s | near-duplicates found | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        names = {"near": "curation.ingest.dedup (rensa)", "datasketch": "datasketch (plain)"}
        for m, r in near.items():
            lines.append(
                f"| {names[m]} | {r['docs']:,} | {r['seconds']:.1f} | {r['docs_per_s']:,.0f} | "
                f"{r['near_duplicates']:,} | {r['peak_mb']:,.0f} |"
            )
    lines += [
        "",
        "## Machine",
        "",
        "```",
        sh("lscpu | head -20"),
        f"nproc --all: {sh('nproc --all')} (os.cpu_count: {os.cpu_count()})",
        sh("free -g"),
        f"load before: {load_before}",
        f"load after:  {load_after}",
        "```",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
