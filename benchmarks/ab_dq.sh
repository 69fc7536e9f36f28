#!/usr/bin/env bash
# The backward's dq reduction on the GPU, in one call: the GPU kernel tests of the atomic path
# (tl engine with FOXCOMPILE_DQ=atomic), then bench_attention once per variant (foxcompile's
# kernels and cuDNN, the same-run baseline, in each), then one run with the op and the peers
# (arctic-fox needs `.peers` in the device call's carry; see benchmarks/fetch_arctic_fox.sh).
#
#   OUT=$OUT bash benchmarks/ab_dq.sh [tests] [ab] [peers]        (default: all three)
#
# Variants (VARIANTS overrides: NAME=ENV=VALUE[;ENV=VALUE] separated by spaces):
#   separate   dq kernel (3 products) after the dk/dv kernel (4)
#   atomic     dk/dv kernel with the fifth product, dq by TMA reduce-adds, the table's configs
#   at-64k     the same with 64-key dk/dv blocks, 8 warps (fewer spills at D = 128)
#   at-32q     the same with 32-query steps (no spills; dq by mma.sync)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT/ab"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.tcache/triton}
PY=${PY:-python3}
steps=${*:-tests ab peers}
VARIANTS=${VARIANTS:-'separate=FOXCOMPILE_DQ=separate atomic=FOXCOMPILE_DQ=atomic at-64k=FOXCOMPILE_DQ=atomic;FOXCOMPILE_KERNEL_CONFIG={"dkdv":[64,64,8,3]} at-32q=FOXCOMPILE_DQ=atomic;FOXCOMPILE_KERNEL_CONFIG={"dkdv":[128,32,8,3]}'}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
for step in $steps; do
  case $step in
    tests)
      stamp "GPU kernel tests, tl engine with atomic dq"
      timeout 300 $PY -m pytest -q -m gpu -p no:cacheprovider -n "${PYTEST_WORKERS:-8}" \
        --timeout 240 tests/test_kernels.py -k "atomic" -rf 2>&1 | tee "$OUT/ab_dq_tests.log" | tail -8
      ;;
    ab)
      for variant in $VARIANTS; do
        name=${variant%%=*}; envs=${variant#*=}
        stamp "variant $name ($envs)"
        ( IFS=';'; for e in $envs; do export "$e"; done
          timeout 240 $PY benchmarks/bench_attention.py --json "$OUT/ab/$name.json" \
            ${SHAPES:+--shapes "$SHAPES"} \
            --skip gluon-acp,gluon-dense,fox-op,flash,flex,fla,arctic-fox-acp,arctic-fox-dense \
            > "$OUT/ab/$name.log" 2>&1 )
        grep -E "^B[0-9]" "$OUT/ab/$name.log" | grep -v skipped
        grep -E "Error|error" "$OUT/ab/$name.log" | head -3
      done
      ;;
    peers)
      stamp "bench_attention with the op, Gluon and arctic-fox (${PEER_ENV:-FOXCOMPILE_DQ=auto})"
      env ${PEER_ENV:-FOXCOMPILE_DQ=auto} timeout 300 $PY benchmarks/bench_attention.py \
        --json "$OUT/peers.json" ${SHAPES:+--shapes "$SHAPES"} --skip flash,flex,fla \
        > "$OUT/peers.log" 2>&1
      grep -E "^B[0-9]|^NVIDIA|^shape" "$OUT/peers.log"
      ;;
  esac
done
stamp done
