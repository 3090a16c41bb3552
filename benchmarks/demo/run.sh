#!/usr/bin/env bash
# Timed `curate demo` from a fresh store and a fresh Prefect home; output goes to benchmarks/demo/last-run.txt.
# Usage (from the repository root): benchmarks/demo/run.sh
set -euo pipefail
work=$(mktemp -d)
export PREFECT_HOME="$work/prefect" HF_HUB_OFFLINE=1
{ echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "wall %e s, max RSS %M KB" .venv/bin/curate demo --store "$work/store"
  echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } 2>&1 | tee benchmarks/demo/last-run.txt
rm -rf "$work"
