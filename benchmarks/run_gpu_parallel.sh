#!/usr/bin/env bash
# Spreads GPU work over the GPUs of a multi-GPU machine (nvidia-h200-x2, -x4, ...) in one device
# call: each argument is "GPU:STEP"; the steps of one GPU run in order, the GPUs in parallel.
#
#   bash benchmarks/run_gpu_parallel.sh 0:alltests 0:parity-dense-0 1:parity-pruned-0 2:throughput-125m-16384
#
# Steps:
#   any step of run_gpu_kernels.sh (alltests, bench, ...), with $OUT/gpuN as its OUT (its
#     files under $OUT/gpuN/all, packed into $OUT/gpuN/results.tgz);
#   parity-RUN-SEED: one loss-parity run of bench_train.py (125m, T = $PARITY_T, batch
#     $PARITY_BATCH, $PARITY_TOKENS tokens, --gate-init $PARITY_GATE_INIT), into
#     $OUT/parity_$PARITY_GATE_INIT/RUN_seedSEED;
#   throughput-CONFIG-T: bench_train.py at one config and sequence length (variants
#     $TRAIN_VARIANTS, extra $TRAIN_ARGS), into $OUT/bench_train_CONFIG_T.json.
#   scaling-CONFIG-T, as "all:scaling-CONFIG-T" (it uses every GPU, so run it alone): data-parallel
#     scaling of bench_train.py at one config and sequence length: the 1-GPU baseline (batch
#     searched to fill the card), then under torchrun on each of $SCALING_GPUS GPUs (default 2 and
#     4 and every GPU of the machine, as many as it has) with each of $SCALING_PARALLEL (default "ddp fsdp"), the same batch
#     per GPU; variants $SCALING_VARIANTS (default fox_acp fox_acp_dense sdpa), extra $TRAIN_ARGS;
#     into $OUT/scaling_CONFIG_T.json, whose rows give tokens/s per GPU and the scaling efficiency.
#     SMOKE=1 runs it on CPU with gloo instead (bench_train.py --smoke; CONFIG and T are ignored):
#       SMOKE=1 bash benchmarks/run_gpu_parallel.sh all:scaling-tiny-64
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
    scaling-*-*)
      local config=${2#scaling-}; local seq_len=${config##*-}; config=${config%-*}
      local json=$OUT/scaling_${config}_$seq_len.json
      local bench=(benchmarks/bench_train.py --device cuda --configs "$config" --seq-lens "$seq_len"
                   --variants ${SCALING_VARIANTS:-fox_acp fox_acp_dense sdpa})
      local counts=${SCALING_GPUS:-}
      if [ "${SMOKE:-0}" = 1 ]; then
        bench=(benchmarks/bench_train.py --smoke --variants ${SCALING_VARIANTS:-fox_acp fox_acp_dense sdpa})
        json=$OUT/scaling_smoke.json; counts=${counts:-2}
      else
        local all; all=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
        counts=${counts:-$( (echo 2; echo 4; echo "$all") | sort -nu | awk -v n="$all" '$1 <= n' | tr '\n' ' ')}
      fi
      echo "-- 1 GPU"
      CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} $PY "${bench[@]}" ${TRAIN_ARGS:-} --out "$json" 2>&1 | grep -v Warning
      for n in $counts; do
        for mode in ${SCALING_PARALLEL:-ddp fsdp}; do
          echo "-- $n GPUs, $mode"
          $PY -m torch.distributed.run --standalone --nproc-per-node "$n" "${bench[@]}" \
            --parallel "$mode" ${TRAIN_ARGS:-} --out "$json" 2>&1 | grep -v "Warning\|OMP_NUM_THREADS\|\*\*\*\*\|^W.*run.py"
        done
      done ;;
    *)
      OUT=$OUT/gpu$1 bash benchmarks/run_gpu_kernels.sh "$2" ;;
  esac
}

for gpu in $(printf '%s\n' "$@" | cut -d: -f1 | sort -u); do
  (
    [ "$gpu" = all ] || export CUDA_VISIBLE_DEVICES=$gpu
    for item in "$@"; do
      [ "${item%%:*}" = "$gpu" ] || continue
      echo "== [$(date +%T)] GPU $gpu: ${item#*:}"
      run_step "$gpu" "${item#*:}"
    done
    echo "== [$(date +%T)] GPU $gpu done"
  ) > "$OUT/gpu$gpu.log" 2>&1 &
done
wait
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/gpus.txt"
tail -n 30 "$OUT"/gpu*.log
