"""Peak memory of `curate ingest` on small hostile files that expand to a lot (issue 23, item 9).

Each case is real rows (from ../shared/data) with one hostile part of --size-mb MiB:

  jsonl-gz-line        HH-RLHF .jsonl.gz with one line of SIZE MiB (1 MB compressed at 1 GiB); Arrow block path
  jsonl-gz-line-rows   the same file, row path (IngestOptions(block_path=False))
  jsonl-gz-lines       HH-RLHF .jsonl.gz with SIZE MiB in lines of 8 MiB, each under the row limit: batches
                       end at --batch-mb of text (IngestOptions.batch_bytes), not at 50,000 rows
  json-gz-string       Alpaca .json.gz array with one string of SIZE MiB (refused: the JSON cap)
  jsonl-blank-lines    HH-RLHF .jsonl with SIZE MiB of blank lines in the middle; Arrow block path
  jsonl-blank-rows     the same file, row path
  csv-line             GSM8K rows as CSV (quoted multi-line answers) with one line of SIZE MiB
  parquet-string       Alpaca rows as zstd Parquet with one string of SIZE MiB (Arrow decompresses its row
                       group; the row is an error row without Python copies)

and its baseline: the same rows without the hostile part, read the same way. Every ingest runs in a child
process of its own (a fresh interpreter; GX, polars and Arrow loaded as in `curate ingest`), which reports
its own peak RSS (VmHWM: ru_maxrss would carry over a large parent's) and the accounting. The cost of the
hostile part is the case's peak minus its baseline's.

    .venv/bin/python benchmarks/ingest/hostile_memory.py --size-mb 1024        # the issue's cases -> RESULTS-hostile.md
    .venv/bin/python benchmarks/ingest/hostile_memory.py --size-mb 256 --cases jsonl-gz-line --json

``--code DIR`` runs the children on another checkout's code (e.g. the main branch, for a before/after).
Files are written once under --work (gzip of a long line is about 1/1000 of it; the blank lines are
written plain, SIZE MiB on disk).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))

CHILD = r"""
import json, sys, time
from pathlib import Path
from curation.ingest.pipeline import IngestOptions, ingest_paths
from curation.core.store import Store

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

f, root, opts = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
started = time.perf_counter()
(res,) = ingest_paths(Store(root), [str(f)], IngestOptions(**opts))
out = {"seconds": round(time.perf_counter() - started, 2), "peak_mb": round(peak_mb(), 1),
       "rows_read": res.rows_read, "accepted": res.accepted, "quarantined": res.quarantined,
       "error": res.error, "reasons": []}
if not res.error:
    q = Store(root).read("quarantine").to_pylist()
    out["reasons"] = sorted({r["reason"][:160] for r in q})
print(json.dumps(out))
"""

MIB = 1 << 20
#: case -> (file builder name, ingest options, baseline file builder name)
CASES: dict[str, tuple[str, dict, str]] = {
    "jsonl-gz-line": ("hh_long_line", {}, "hh_gz"),
    "jsonl-gz-line-rows": ("hh_long_line", {"block_path": False}, "hh_gz"),
    "jsonl-gz-lines": ("hh_long_lines", {}, "hh_gz"),
    "json-gz-string": ("alpaca_long_string", {}, "alpaca_gz"),
    "jsonl-blank-lines": ("hh_blank_lines", {}, "hh_plain"),
    "jsonl-blank-rows": ("hh_blank_lines", {"block_path": False}, "hh_plain"),
    "csv-line": ("gsm8k_csv_long_line", {"kind": "sft", "mapping": {"prompt": "question", "response": "answer"}}, "gsm8k_csv"),
    "parquet-string": ("alpaca_parquet_long_string", {}, "alpaca_parquet"),
}  # fmt: skip


def _hh_lines() -> list[bytes]:
    with gzip.open(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rb") as fh:
        return fh.read().splitlines()


def _repeat_into(write, piece: bytes, size: int) -> None:
    block = piece * (MIB // len(piece))
    left = size
    while left > 0:
        write(block[: min(left, len(block))])
        left -= min(left, len(block))


def build(name: str, work: Path, size: int) -> Path:
    """The input file ``name`` (written once, under a temporary name until complete)."""
    suffix = {"alpaca_long_string": ".json.gz", "alpaca_gz": ".json.gz", "hh_gz": ".jsonl.gz"}.get(name)
    suffix = suffix or {"hh_long_line": ".jsonl.gz", "hh_long_lines": ".jsonl.gz", "gsm8k_csv": ".csv"}.get(
        name
    )
    suffix = suffix or {"gsm8k_csv_long_line": ".csv", "alpaca_parquet": ".parquet"}.get(name)
    suffix = suffix or {"alpaca_parquet_long_string": ".parquet"}.get(name, ".jsonl")
    sized = name in (
        "hh_long_line",
        "hh_long_lines",
        "alpaca_long_string",
        "hh_blank_lines",
        "gsm8k_csv_long_line",
        "alpaca_parquet_long_string",
    )
    path = work / (f"{name}-{size // MIB}mib{suffix}" if sized else f"{name}{suffix}")
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = json.loads((DATA / "llama-factory" / "alpaca_en_demo.json").read_bytes())
        if name == "alpaca_parquet_long_string":
            rows = [*rows[:500], {"instruction": "x" * size, "input": "", "output": "y"}, *rows[500:]]
        pq.write_table(pa.Table.from_pylist(rows), tmp, compression="zstd")
        os.replace(tmp, path)
        return path
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(tmp, "wb") as out:  # type: ignore[operator]
        if name in ("hh_gz", "hh_plain", "hh_long_line", "hh_long_lines", "hh_blank_lines"):
            lines = _hh_lines()
            for i, line in enumerate(lines):
                if i == 1000 and name == "hh_long_line":
                    out.write(b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: ')
                    _repeat_into(out.write, b"x", size)
                    out.write(b'", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: no"}\n')
                if i == 1000 and name == "hh_long_lines":
                    for k in range(max(1, size // (8 * MIB))):
                        out.write(b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: %d ' % k)
                        _repeat_into(out.write, b"x", 8 * MIB - 100)
                        out.write(b'", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: no"}\n')
                if i == 1000 and name == "hh_blank_lines":
                    _repeat_into(out.write, b"\n", size)
                out.write(line + b"\n")
        elif name in ("alpaca_gz", "alpaca_long_string"):
            rows = json.loads((DATA / "llama-factory" / "alpaca_en_demo.json").read_bytes())
            out.write(b"[")
            for i, row in enumerate(rows):
                if i == 500 and name == "alpaca_long_string":
                    out.write(b'{"instruction": "')
                    _repeat_into(out.write, b"x", size)
                    out.write(b'", "input": "", "output": "y"}, ')
                out.write(json.dumps(row).encode() + (b", " if i < len(rows) - 1 else b""))
            out.write(b"]")
        else:  # GSM8K as CSV: answers hold newlines, so csv quotes them (multi-line records)
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["question", "answer"])
            for i, line in enumerate((DATA / "gsm8k" / "test.jsonl").read_text().splitlines()):
                row = json.loads(line)
                writer.writerow([row["question"], row["answer"]])
                if i == 600 and name == "gsm8k_csv_long_line":
                    out.write(text.getvalue().encode())
                    text = io.StringIO()
                    writer = csv.writer(text)
                    _repeat_into(out.write, b"z", size)
                    out.write(b",long\r\n")
            out.write(text.getvalue().encode())
    os.replace(tmp, path)
    return path


def run_child(path: Path, work: Path, opts: dict, code: Path) -> dict:
    store = work / f"store-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(store), json.dumps(opts)],
        capture_output=True,
        text=True,
        env=env,
        cwd=code,
        check=False,
    )
    wall = time.perf_counter() - started
    subprocess.run(["rm", "-rf", str(store)], check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return {"failed": " | ".join(tail), "process_seconds": round(wall, 1)}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = round(wall, 1)
    return res


def machine() -> str:
    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False).stdout.strip()

    return "\n".join(
        [
            sh("lscpu | grep -E 'Model name|^CPU\\(s\\)'"),
            sh("free -g | head -2"),
            f"load: {sh('cat /proc/loadavg')}",
            f"Python {platform.python_version()}",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="MiB of the hostile part")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_hostile"))
    ap.add_argument("--code", type=Path, default=REPO, help="checkout whose code the children run")
    ap.add_argument(
        "--max-json-mb", type=float, help="the JSON cap (IngestOptions.max_json_bytes) of every case"
    )
    ap.add_argument("--batch-mb", type=float, help="IngestOptions.batch_bytes of every case, in MiB")
    ap.add_argument("--no-baseline", action="store_true", help="run the hostile files only")
    ap.add_argument("--json", action="store_true", help="print one JSON object per case, write no file")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS-hostile.md"))
    ap.add_argument(
        "--append", action="store_true", help="add this run's section to --out instead of replacing it"
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    size = args.size_mb * MIB
    results = []
    load_before = Path("/proc/loadavg").read_text().strip()
    for case in args.cases.split(","):
        builder, opts, base = CASES[case]
        if args.max_json_mb:
            opts = {**opts, "max_json_bytes": int(args.max_json_mb * MIB)}
        if args.batch_mb:
            opts = {**opts, "batch_bytes": int(args.batch_mb * MIB)}
        hostile = build(builder, args.work, size)
        res = {
            "case": case,
            "file_mb": round(hostile.stat().st_size / 1e6, 2),
            "hostile": run_child(hostile, args.work, opts, args.code.resolve()),
            "baseline": {}
            if args.no_baseline
            else run_child(build(base, args.work, size), args.work, opts, args.code.resolve()),
        }
        if "peak_mb" in res["hostile"] and "peak_mb" in res["baseline"]:
            res["extra_mb"] = round(res["hostile"]["peak_mb"] - res["baseline"]["peak_mb"], 1)
        results.append(res)
        if args.json:
            print(json.dumps(res), flush=True)
    if not args.json:
        write(args, results, load_before)


def write(args, results: list[dict], load_before: str) -> None:
    lines = [
        "# Hostile inputs: peak memory of `curate ingest` (issue 23, item 9)",
        "",
        f"## {args.size_mb} MiB, code: {args.code.name if args.code.resolve() != REPO else 'this checkout'}",
        "",
        f"Command: `.venv/bin/python benchmarks/ingest/hostile_memory.py {shlex.join(sys.argv[1:])}`  ",
        f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}  ",
        f"Hostile part: {args.size_mb} MiB; code: {args.code}. Each ingest in a child process of its own; "
        "peak = its VmHWM; baseline = the same real rows without the hostile part, read the same way; "
        "extra = peak - baseline. Seconds: the ingest call inside the child (wall time, shared machine).",
        "",
        "| case | file MB | peak MB | baseline MB | extra MB | seconds | outcome |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        h, b = r["hostile"], r["baseline"]
        if "failed" in h:
            outcome = f"FAILED: {h['failed']}"
        elif h["error"]:
            outcome = f"file refused: {h['error'][:220]}"
        else:
            outcome = (
                f"{h['accepted']} accepted, {h['quarantined']} quarantined: " + "; ".join(h["reasons"])[:220]
            )
        lines.append(
            f"| {r['case']} | {r['file_mb']:,} | {h.get('peak_mb', '')} | {b.get('peak_mb', '')} | "
            f"{r.get('extra_mb', '')} | {h.get('seconds', h.get('process_seconds'))} | {outcome} |"
        )
    lines += ["", "Machine:", "", "```", f"load before: {load_before}", machine(), "```", ""]
    if args.append and args.out.exists():
        lines = [args.out.read_text().rstrip("\n"), "", *lines[2:]]
    args.out.write_text("\n".join(lines))
    print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
