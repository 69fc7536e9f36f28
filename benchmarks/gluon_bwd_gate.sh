#!/usr/bin/env bash
# One device call for the Gluon backward: a few cases against tl and float64 first (each under a
# short timeout: a hung kernel must not eat the call), and only if all of them agree, the timing
# (bench_attention.py, SHAPES) and the GPU tests of the kernels. Results under $OUT.
#   bash benchmarks/gluon_bwd_gate.sh
# BENCH_SKIP replaces the rows the bench leaves out. TESTS_K=expr passes -k expr to the tests (TESTS=0 leaves them out); FWD_CONFIGS="a b" first times the
# tl forward with each FOXCOMPILE_KERNEL_CONFIG forward entry (e.g. 64,128,4,3) at FWD_SHAPES,
# into $OUT/fwd_CONFIG.json (cuDNN timed in each, the same-run baseline).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
export TRITON_CACHE_DIR=$PWD/.tcache/triton TORCHINDUCTOR_CACHE_DIR=$PWD/.tcache/inductor
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/env.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" >> "$OUT/env.txt"
cat "$OUT/env.txt"
for config in ${FWD_CONFIGS:-}; do
  FOXCOMPILE_KERNEL_CONFIG="{\"fwd\": [$config]}" timeout -k 5 ${FWD_TIMEOUT:-80} \
    python benchmarks/bench_attention.py --json "$OUT/fwd_${config//,/_}.json" \
    --shapes "${FWD_SHAPES:-B8-T4096-H24-D64,B2-T16384-H24-D64}" \
    --skip flash,flex,fla,fox-op,arctic-fox-acp,arctic-fox-dense,gluon-acp,gluon-dense,tlg-acp,tlg-dense,gtl-acp,gtl-dense \
    > "$OUT/fwd_${config//,/_}.log" 2>&1
  echo "tl forward config $config:"; grep -E "^B[0-9]" "$OUT/fwd_${config//,/_}.log" | grep -v skipped
done
timeout -k 5 ${GATE_TIMEOUT:-100} python benchmarks/check_gluon_bwd.py --cases "${GATE_CASES:-t17,big,pruned,d128big}" \
  --case-timeout "${CASE_TIMEOUT:-70}" --json "$OUT/gate.json" 2>&1 | tee "$OUT/gate.log"
if ! python - "$OUT/gate.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
bad = [r["case"] for r in rows if "error" in r
       or any(r[f"{k}_vs_tl"] > 0.05 or r[f"{k}_nan"] for k in ("dq", "dk", "dv", "dlam"))]
print("gate:", "FAILED " + ",".join(bad) if bad else "passed")
sys.exit(1 if bad else 0)
PY
then exit 1; fi
timeout -k 5 ${BENCH_TIMEOUT:-110} python benchmarks/bench_attention.py --json "$OUT/bench.json" \
  --shapes "${SHAPES:-B8-T4096-H24-D64,B2-T16384-H24-D64,B1-T16384-H16-D128}" \
  --skip "${BENCH_SKIP:-flash,flex,fla,fox-op,arctic-fox-acp,arctic-fox-dense,gluon-acp}" > "$OUT/bench.log" 2>&1
grep -E "^B[0-9]" "$OUT/bench.log" | grep -v skipped
[ "${TESTS:-1}" = 0 ] && exit 0
timeout -k 5 ${TESTS_TIMEOUT:-230} python -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 \
  ${TESTS_K:+-k "$TESTS_K"} tests/test_kernels.py tests/test_decode.py -rf 2>&1 | tee "$OUT/tests.log" | tail -15
