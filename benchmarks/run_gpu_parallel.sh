#!/usr/bin/env bash
# Spreads GPU work over the GPUs of a multi-GPU machine (nvidia-h200-x2, -x4, ...) in one device
# call: each argument is "GPU:STEP"; the steps of one GPU run in order, the GPUs in parallel.
#
#   bash benchmarks/run_gpu_parallel.sh 0:alltests 0:parity-dense-0 1:parity-pruned-0 2:throughput-125m-16384
#
# Steps:
#   any step of run_gpu_kernels.sh (alltests, bench, ...), with $OUT/gpuN as its OUT;
#   parity-RUN-SEED: one loss-parity run of bench_train.py (125m, T = $PARITY_T, batch
#     $PARITY_BATCH, $PARITY_TOKENS tokens, --gate-init $PARITY_GATE_INIT), into
#     $OUT/parity_$PARITY_GATE_INIT/RUN_seedSEED;
#   throughput-CONFIG-T: bench_train.py at one config and sequence length (variants
#     $TRAIN_VARIANTS, extra $TRAIN_ARGS), into $OUT/bench_train_CONFIG_T.json.
# Logs and results go under $OUT (default ./out); each GPU's output to $OUT/gpuN.log. The device
# tool brings back only a few files: tar what you need under $OUT at the end of the call.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.tcache/triton}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.tcache/inductor}
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PY=${PY:-python3}
PARITY_T=${PARITY_T:-16384} PARITY_BATCH=${PARITY_BATCH:-4} PARITY_TOKENS=${PARITY_TOKENS:-33554432}
PARITY_GATE_INIT=${PARITY_GATE_INIT:-decay}

run_step() {  # gpu step
  case $2 in
    parity-*-*)
      local run=${2#parity-}; local seed=${run##*-}; run=${run%-*}
      TORCH_LOGS=foxcompile,recompiles $PY benchmarks/bench_train.py --loss-parity \
        --config 125m --seq-len "$PARITY_T" --batch-size "$PARITY_BATCH" \
        --parity-tokens "$PARITY_TOKENS" --parity-runs "$run" --seeds "$seed" \
        --gate-init "$PARITY_GATE_INIT" --out "$OUT/parity_$PARITY_GATE_INIT.json" 2>&1 | tr '\r' '\n' | grep -v "^train: " ;;
    throughput-*-*)
      local config=${2#throughput-}; local seq_len=${config##*-}; config=${config%-*}
      $PY benchmarks/bench_train.py --device cuda --configs "$config" --seq-lens "$seq_len" \
        --variants ${TRAIN_VARIANTS:-fox_acp fox_acp_dense sdpa} ${TRAIN_ARGS:-} \
        --out "$OUT/bench_train_${config}_$seq_len.json" 2>&1 | grep -v Warning ;;
    *)
      OUT=$OUT/gpu$1 bash benchmarks/run_gpu_kernels.sh "$2" ;;
  esac
}

for gpu in $(printf '%s\n' "$@" | cut -d: -f1 | sort -u); do
  (
    export CUDA_VISIBLE_DEVICES=$gpu
    for item in "$@"; do
      [ "${item%%:*}" = "$gpu" ] || continue
      echo "== [$(date +%T)] GPU $gpu: ${item#*:}"
      run_step "$gpu" "${item#*:}"
    done
    echo "== [$(date +%T)] GPU $gpu done"
  ) > "$OUT/gpu$gpu.log" 2>&1 &
done
wait
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/gpus.txt"
tail -n 30 "$OUT"/gpu*.log
