#!/usr/bin/env bash
# The GPU benchmarks in one go (scoring throughput with the bundled MiniLM and a 1.1B reward model,
# noise detection with a fine-tuned cross-fit; SECTIONS picks them, train_large = the SFT and RESCUE
# trainers on a 1.1B causal LM; RM training vs TRL with TRAIN=1), on a CUDA machine
# with torch/transformers/sklearn but no duckdb/polars.
# Needs ./.devpack from benchmarks/gpu/prepare.py. Results: JSON and logs under $OUT (default ./gpu-out).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers, pyarrow, sklearn; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pyarrow', pyarrow.__version__)"
$PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_core .devpack/whl/orjson-*.whl
export PYTHONPATH=/tmp/site_core

$PY benchmarks/gpu/device_bench.py unpack || exit 1
bench=(benchmarks/gpu/device_bench.py --out "$OUT")
SECTIONS=${SECTIONS:-scoring scoring_large noise}  # and train_large: SFT (UAL) and RESCUE on a 1.1B LM;
# train_shapes: their first pass over new batch shapes, with and without width rounding / expandable segments
for s in $SECTIONS; do
  if [ "$s" = train_shapes ]; then
    # The first pass over new batch shapes, each variant in a fresh process: widths as they come (1) or
    # rounded to 64 tokens, with the CUDA caching allocator's default or its expandable segments.
    e=expandable_segments:True
    for v in pad1, pad64, pad1_expandable,$e pad64_expandable,$e pad8_expandable,$e; do
      IFS=, read -r name alloc <<< "$v"
      pad=${name%%_*}; pad=${pad#pad}
      env ${alloc:+PYTORCH_CUDA_ALLOC_CONF=$alloc} timeout 120 $PY "${bench[@]}" train_large --tag "_$name" \
        --pad-multiple "$pad" --order sft_ual,sft_ual,rescue,rescue --sft-rows 512 --groups 128 2>&1 \
        | grep -v Warning | tee -a "$OUT/train_shapes.log"
    done
    continue
  fi
  case $s in
    scoring) t=100; extra=() ;;
    scoring_large) t=150; extra=(--budgets 65536) ;;
    noise) t=240; extra=() ;;
    train_large) t=300; extra=() ;;
    *) echo "unknown section $s"; continue ;;
  esac
  timeout $t $PY "${bench[@]}" "$s" ${extra[@]+"${extra[@]}"} 2>&1 | grep -v Warning | tee "$OUT/$s.log"
done
if [ "${TRAIN:-0}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_trl .devpack/whl/*.whl || echo "wheel install failed"
  train=(benchmarks/train_rm/bench.py --shards .devpack/shards --model .devpack/minilm --device cuda --bf16 --threads 4 --warmup 1)
  timeout 90 $PY "${train[@]}" --only curate,curate_drop --out "$OUT/train_curate.json" 2>&1 | tail -n 20 | tee "$OUT/train_curate.log"
  PYTHONPATH=/tmp/site_core:/tmp/site_trl timeout 120 $PY "${train[@]}" --only trl_group_by_length,trl_default \
    --out "$OUT/train_trl.json" 2>&1 | tail -n 20 | tee "$OUT/train_trl.log"
fi
echo "done"
