#!/usr/bin/env bash
# Builds, checks and times foxcompile's Triton kernels on the GPU machine in one call.
#
#   bash benchmarks/run_gpu_kernels.sh [tests] [gputests] [alltests] [quickstart] [plan] [profile] [sweep]
#       [bench] [ab] [abref] [variants] [ncu] [ncusrc] [train] [decode] [gendecode] [gluonbwd]
#       [choice] [spread] [host] [timeline] [headorder] [trainprofile]
#   (default: tests bench)
#
# Writes under $OUT/all ($OUT defaults to ./out): env.txt, tests.log, plan.log, sweep.json/sweep.log,
# bench.json/bench.log, ... (each step's files, below). A device call brings back at most 8
# files, top-level ones first, so after every step all of $OUT/all but Nsight's .ncu-rep reports
# is packed into $OUT/results.tgz (unpack with `tar -xzf results.tgz`), and env.txt and
# targets.txt (and choice.txt, ab_compare.txt) are copied to $OUT.
# Triton and Inductor caches go to .tcache/ (git-ignored), kept while the machine stays warm.
# ab: bench_attention once per variant of AB (space-separated NAME:ENV=VALUE[+ENV=VALUE]), e.g.
#   AB="ptr:FOXCOMPILE_TMA=0 tma:FOXCOMPILE_TMA=1", foxcompile and cuDNN rows only, into
#   $OUT/ab/NAME.json (cuDNN is timed in each, as the same-run baseline); AB_SKIP=key,... leaves more rows out.
#   Variants named NAME.rK (round K) are merged into medians and ratios to AB_BASE (default: old
#   or main) by benchmarks/ab_compare.py, into $OUT/ab_compare.txt / .json.
# headorder: FOXCOMPILE_HEAD_ORDER=index against work and backward: ab with HEAD_ORDER_ROUNDS
#   (default 2) alternated rounds of each (tl and Gluon rows and cuDNN; base index), then the timeline in each
#   order (TIMELINE_NAME timeline_index / timeline_work, at TIMELINE_SHAPES, default
#   B2-T16384-H24-D64: `idle_at_end` is the tail the order should shorten).
# choice: where the Gluon engine should be chosen automatically: the tl, tl+Gluon and Gluon rows
#   of bench_attention.py at CHOICE_SHAPES (default: D = 64 at 4k, 8k, 16k keys and D = 128 at
#   4k, 16k), then benchmarks/engine_choice.py's proposal for PREFERRED_MIN_KEYS, into
#   $OUT/choice_bench.json / .log and $OUT/choice.txt / .json. With BENCH_ARGS="--doc-len 2048
#   --doc-dtype int32" the runs pack documents and the proposal is for PREFERRED_MIN_KEYS_WITH_DOCS.
# trainprofile: benchmarks/profile_train.py (a training step's GPU time by kernel group, fox_acp
#   against sdpa) once per ';'-separated argument list of TRAIN_PROFILE_ARGS (default: --config
#   125m --seq-len 4096 --batch-size 48), into $OUT/profile_train_N.json / .png and profile_train.log.
# decode: benchmarks/bench_decode_kernel.py (decode attention alone) into $OUT/decode_kernel.json.
# gendecode: benchmarks/bench_decode.py (whole-model decoding) once per ';'-separated argument
#   list of GEN_DECODE (each run's --out is $OUT/gendecode_N.json), logs in $OUT/gendecode.log.
# spread: benchmarks/bwd_spread.py (the Gluon backward alone, with and without pruning, at
#   several allocator states in one process; SPREAD_ARGS="--trials 8 --repeats 3") into
#   $OUT/bwd_spread.json / .log.
# host: benchmarks/host_overhead.py (the op's host time per call and step, and its kernel
#   launches per call, on shapes too small to load the GPU) into $OUT/host_overhead.json / .log.
# timeline: benchmarks/item_timeline.py (the Gluon kernels' TIMELINE build: where each work
#   item's time goes, at TIMELINE_SHAPES or the three standard shapes) into $OUT/timeline.json / .log
#   (TIMELINE_NAME=NAME: $OUT/NAME.json / .log instead, e.g. one per FOXCOMPILE_HEAD_ORDER).
# gluonbwd: benchmarks/check_gluon_bwd.py (the Gluon backward against tl and float64, case by
#   case; GLUONBWD_CASES=t64,g2,... picks some) into $OUT/gluon_bwd_check.json / .log.
# gputests: python -m pytest tests/test_gpu.py tests/test_kernels.py (all of them: GPU and CPU
#   tests), into $OUT/gputests.log.
# abref: the kernels of another version (OLD=folder holding that checkout, or OLD_REF=git ref,
#   unpacked with git archive, which needs the repository's .git there) against this checkout's,
#   timed by this checkout's bench_attention.py (foxcompile rows and cuDNN, the same-run baseline),
#   one process per version and round, alternated old/new for ROUNDS rounds (default 2); into
#   $OUT/ab_ref.log, $OUT/ab_ref.json (every round, medians, new/old ratios) and
#   $OUT/ab_ref.txt (the table). To carry an older version to a machine without the repository:
#   here, `git archive REF | tar -x -C .ab_old` in the repository root, `.ab_old` in carry, and
#   OLD=.ab_old on the command line.
# variants: the versions that benchmarks/prepare_variants.sh unpacked into build/variants/NAME
#   (carry `build`): each variant's GPU tests (VARIANT_TESTS, default tests/test_kernels.py,
#   -k VARIANT_TESTS_K, default gluon; the whole -m gpu suite of a variant about to land:
#   VARIANT_TESTS=tests/ VARIANT_TESTS_K=all VARIANT_TESTS_TIMEOUT=330; or only for the
#   variants named in VARIANT_FULL, space-separated), then VARIANT_ROUNDS (default 2) rounds
#   of the same bench, this tree (main, the same-call baseline) and every variant alternated,
#   then their medians and ratios to main (benchmarks/ab_compare.py), into $OUT/variants/
#   (VARIANT_SKIP: rows left out; SHAPES and BENCH_ARGS as for bench, e.g.
#   BENCH_ARGS="--doc-len 2048" for packed sequences). VARIANT_TIMELINE=1: then each tree's
#   item_timeline.py (main's first) into $OUT/variants/NAME.timeline.json / .log.
# ncu: Nsight Compute counters of the dense kernels and cuDNN (benchmarks/ncu_kernels.py) at each
#   of NCU_SHAPES, into $OUT/ncu_SHAPE.csv / .txt.
# ncusrc: per-instruction stall samples (ncu SourceCounters) of one kernel per ';'-separated
#   entry of NCUSRC, "NAME KERNEL_REGEX SHAPE [--prune]" (default: "bwd $NCU_KERNEL $NCU_SHAPE",
#   _gluon_bwd at B8-T4096-H24-D64), into $OUT/ncusrc_NAME.ncu-rep, _sass.csv, _details.txt and
#   _summary.txt / .json (benchmarks/ncu_source_summary.py: where the warps wait)
#   (first run on an H200 2026-12-06).
# Env: CONFIGS=path/to/sweep.json times with that sweep's best launch configs;
#      SHAPES=B8-T4096-H24-D64,... ; SKIP=flex,fla ; PYTEST_WORKERS=8;
#      BENCH_ROUNDS=3: bench times every row 3 times, round by round, and keeps the medians
#      (bench_attention.py --rounds; about 3x the bench's timing time).
#      BENCH_ARGS="--doc-len 512 --doc-dtype int32": more bench_attention.py arguments for bench
#      and ab (here: sequences packed as documents of 512 tokens, int32 ids).
# bench's arctic-fox rows need .peers/arctic-fox (benchmarks/fetch_arctic_fox.sh) and `.peers` in
#   the device call's carry list (else they report skipped). After the bench, benchmarks/targets.py
#   checks the speed targets against it (and against $OUT/bench_train*.json when a train step ran
#   before it: `train bench`), into $OUT/targets.txt / .json.
# train: benchmarks/bench_train.py once per ';'-separated argument list of TRAIN_ARGS (each run
#   limited to TRAIN_TIMEOUT s, default 560), e.g. for the training targets on an H200:
#   TRAIN_ARGS="--configs 760m --seq-lens 16384 --variants fox_acp sdpa --batch-size 3 --warmup-steps 2 --steps 5;
#   --configs 125m --seq-lens 4096 --variants fox_acp sdpa --batch-size 60 --warmup-steps 2 --steps 5"
#   (the card-filling batches of the H200 runs; without --batch-size it halves from a large one).
set -u
cd "$(dirname "$0")/.."
TOP=$(mkdir -p "${OUT:-$PWD/out}" && cd "${OUT:-$PWD/out}" && pwd)
OUT=$TOP/all
mkdir -p "$OUT"
pack() {
  tar -czf "$TOP/results.tgz.part" --exclude='*.ncu-rep' -C "$OUT" . \
    && mv "$TOP/results.tgz.part" "$TOP/results.tgz"
  for f in env.txt targets.txt choice.txt ab_compare.txt; do if [ -f "$OUT/$f" ]; then cp "$OUT/$f" "$TOP/"; fi; done
}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.tcache/triton}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.tcache/inductor}
mkdir -p "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR"
PY=${PY:-python3}
steps=${*:-tests bench}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

# ab's variants ($1, space-separated NAME:ENV=VALUE[+ENV=VALUE]), each in its own process, into
# $OUT/ab/NAME.json / .log; names NAME.rK (round K) are merged by ab_compare.py (base AB_BASE)
# into $OUT/ab_compare.txt / .json.
run_ab() {
  mkdir -p "$OUT/ab"
  for variant in $1; do
    name=${variant%%:*}; envs=${variant#*:}
    stamp "variant $name ($envs)"
    env ${envs//+/ } timeout 300 $PY benchmarks/bench_attention.py --json "$OUT/ab/$name.json" \
      ${SHAPES:+--shapes "$SHAPES"} --skip flash,flex,fla,fox-op${AB_SKIP:+,$AB_SKIP} \
      ${BENCH_ARGS:-} > "$OUT/ab/$name.log" 2>&1
    grep -E "^B[0-9]" "$OUT/ab/$name.log" | grep -E "foxcompile|cuDNN" | grep -v skipped
    grep -E "Error|error" "$OUT/ab/$name.log" | head -3
  done
  if compgen -G "$OUT/ab/*.r[0-9]*.json" > /dev/null; then
    $PY benchmarks/ab_compare.py "$OUT/ab" ${AB_BASE:+--base "$AB_BASE"} --json "$OUT/ab_compare.json" \
      2>&1 | tee "$OUT/ab_compare.txt"
  fi
}
run_timeline() {
  stamp "work items' timelines (item_timeline.py${TIMELINE_NAME:+, $TIMELINE_NAME})"
  timeout ${TIMELINE_TIMEOUT:-240} $PY benchmarks/item_timeline.py --json "$OUT/${TIMELINE_NAME:-timeline}.json" \
    ${TIMELINE_SHAPES:+--shapes "$TIMELINE_SHAPES"} 2>&1 | grep -v Warning | tee "$OUT/${TIMELINE_NAME:-timeline}.log"
}

# Calls "$2 N ARGS" once per ';'-separated argument list ARGS of $1, N counting from 1.
each_args() {
  local n=0 args runs
  IFS=';' read -ra runs <<< "$1"
  for args in "${runs[@]}"; do
    n=$((n + 1))
    "$2" "$n" "$args"
  done
}
run_train() {   # bench_train.py run $1 into $OUT/bench_train.json, bench_train_2.json, ...
  local out=$OUT/bench_train.json; [ "$1" -gt 1 ] && out=$OUT/bench_train_$1.json
  stamp "training throughput (bench_train.py $2)"
  timeout ${TRAIN_TIMEOUT:-560} $PY benchmarks/bench_train.py --device cuda $2 --out "$out" \
    2>&1 | tee -a "$OUT/train.log" | grep -v Warning | tail -12
}
run_train_profile() {   # profile_train.py run $1 into $OUT/profile_train_$1.json
  stamp "training step profile (profile_train.py $2)"
  timeout ${TRAIN_TIMEOUT:-560} $PY benchmarks/profile_train.py --device cuda $2 \
    --out "$OUT/profile_train_$1.json" --plot "$OUT/profile_train_$1.png" 2>&1 | grep -v Warning | tee -a "$OUT/profile_train.log" | tail -45
}
run_gendecode() {   # bench_decode.py run $1 into $OUT/gendecode_$1.json
  stamp "bench_decode $1: $2"
  timeout ${GEN_DECODE_TIMEOUT:-300} $PY benchmarks/bench_decode.py $2 \
    --out "$OUT/gendecode_$1.json" >> "$OUT/gendecode.log" 2>&1
  grep -E "^ *[0-9]+m " "$OUT/gendecode.log" | tail -n 12
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
  $PY -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  $PY -c "import fla; print('fla', fla.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

for step in $steps; do
  case $step in
    tests)
      stamp "GPU tests"
      workers=${PYTEST_WORKERS:-8}
      timeout 330 $PY -m pytest -q -m gpu -p no:cacheprovider -n "$workers" --timeout 240 \
        tests/test_kernels.py -rf 2>&1 | tee "$OUT/tests.log" | tail -25
      ;;
    gputests)
      stamp "GPU tests: tests/test_gpu.py tests/test_kernels.py"
      workers=${PYTEST_WORKERS:-8}
      timeout ${GPUTESTS_TIMEOUT:-330} $PY -m pytest -q -p no:cacheprovider -n "$workers" --timeout 240 \
        tests/test_gpu.py tests/test_kernels.py -rf 2>&1 | tee "$OUT/gputests.log" | tail -25
      ;;
    alltests)
      stamp "all GPU tests (kernels, op, backend)"
      workers=${PYTEST_WORKERS:-8}
      timeout 400 $PY -m pytest -q -m gpu -p no:cacheprovider -n "$workers" --timeout 300 \
        tests/ -rf 2>&1 | tee "$OUT/alltests.log" | tail -25
      ;;
    quickstart)
      stamp "quickstart"
      timeout 200 $PY examples/quickstart.py --seq-len 4096 2>&1 | tee "$OUT/quickstart.log" | tail -30
      ;;
    train)
      each_args "${TRAIN_ARGS:---configs 125m --seq-lens 16384 --variants fox_acp fox_acp_dense sdpa --batch-size 2 --warmup-steps 2 --steps 5}" run_train
      ;;
    trainprofile)
      each_args "${TRAIN_PROFILE_ARGS:---config 125m --seq-len 4096 --batch-size 48}" run_train_profile
      ;;
    plan)
      stamp "plan profile"
      timeout 120 $PY benchmarks/bench_attention.py --profile-plan 2>&1 | tee "$OUT/plan.log" | grep "plan ms"
      ;;
    host)
      stamp "host time and launches per op call (host_overhead.py)"
      timeout ${HOST_TIMEOUT:-200} $PY benchmarks/host_overhead.py --json "$OUT/host_overhead.json" \
        2>&1 | grep -v Warning | tee "$OUT/host_overhead.log" | head -32
      ;;
    timeline)
      run_timeline
      ;;
    profile)
      stamp "per-kernel profile"
      timeout ${PROFILE_TIMEOUT:-200} $PY benchmarks/profile_kernels.py ${PROFILE_ARGS:-} 2>&1 | tee -a "$OUT/profile.log" | grep -v Warning
      ;;
    sweep)
      stamp "launch-config sweep"
      timeout 330 $PY benchmarks/bench_attention.py --sweep --json "$OUT/sweep.json" 2>&1 \
        | tee "$OUT/sweep.log" | grep -E "^best|error" | tail -20
      ;;
    ab)
      run_ab "${AB:-ptr:FOXCOMPILE_TMA=0 tma:FOXCOMPILE_TMA=1}"
      ;;
    headorder)
      variants=""
      for r in $(seq 1 "${HEAD_ORDER_ROUNDS:-2}"); do
        variants="$variants index.r$r:FOXCOMPILE_HEAD_ORDER=index work.r$r:FOXCOMPILE_HEAD_ORDER=work backward.r$r:FOXCOMPILE_HEAD_ORDER=backward"
      done
      AB_BASE=index AB_SKIP=${AB_SKIP:-tlg-acp,tlg-dense,gtl-acp,gtl-dense} run_ab "$variants"
      for order in index work; do
        FOXCOMPILE_HEAD_ORDER=$order TIMELINE_NAME=timeline_$order \
          TIMELINE_SHAPES=${TIMELINE_SHAPES:-B2-T16384-H24-D64} TIMELINE_TIMEOUT=${TIMELINE_TIMEOUT:-90} \
          run_timeline
      done
      ;;
    abref)
      old=${OLD:-}
      if [ -z "$old" ]; then
        old=/tmp/foxcompile_ab_old
        rm -rf "$old" && mkdir -p "$old"
        if ! git archive "${OLD_REF:?abref needs OLD (a folder) or OLD_REF (a git ref)}" | tar -x -C "$old"; then
          echo "abref: git archive $OLD_REF failed (no repository here?); pass OLD=folder"; continue
        fi
      fi
      old=$(cd "$old" && pwd)
      # the same harness for both: this checkout's bench_attention.py, run from inside the old
      # checkout so that it imports the foxcompile next to it
      cp benchmarks/bench_attention.py "$old/benchmarks/bench_attention_ab.py"
      abdir=$(mktemp -d)
      : > "$OUT/ab_ref.log"
      for round in $(seq 1 "${ROUNDS:-2}"); do
        for side in old new; do
          if [ $side = old ]; then script=$old/benchmarks/bench_attention_ab.py; else script=benchmarks/bench_attention.py; fi
          stamp "abref round $round: $side"
          echo "=== round $round $side" >> "$OUT/ab_ref.log"
          (cd "$(dirname "$script")/.." && timeout 300 $PY "$script" --json "$abdir/$side.r$round.json" \
            ${SHAPES:+--shapes "$SHAPES"} --skip flash,flex,fla,fox-op) >> "$OUT/ab_ref.log" 2>&1
          grep -E "Error|error" "$OUT/ab_ref.log" | tail -3
        done
      done
      $PY benchmarks/ab_compare.py "$abdir" --json "$OUT/ab_ref.json" | tee "$OUT/ab_ref.txt"
      ;;
    variants)
      # other versions of the tree, unpacked here by benchmarks/prepare_variants.sh into
      # build/variants/NAME (carry `build`): first each variant's GPU kernel tests (-k
      # VARIANT_TESTS_K, default gluon), then VARIANT_ROUNDS (default 2) rounds of the same bench
      # of this tree (main, the same-call baseline) and of each variant, alternated, then
      # ab_compare.py's medians and ratios to main; into $OUT/variants/ (NAME.tests.log,
      # NAME.log, NAME.rK.json, compare.txt / .json)
      mkdir -p "$OUT/variants"
      vskip=${VARIANT_SKIP:-flash,flex,fla,fox-op,arctic-fox-acp,arctic-fox-dense,tlg-acp,tlg-dense,gtl-acp,gtl-dense}
      vbench() {  # vbench NAME DIR ROUND: one bench of the tree in DIR
        (cd "$2" && PYTHONPATH=$PWD TRITON_CACHE_DIR=$PWD/.tcache/triton \
          timeout ${VARIANT_BENCH_TIMEOUT:-120} $PY benchmarks/bench_attention.py \
          --json "$OUT/variants/$1.r$3.json" ${SHAPES:+--shapes "$SHAPES"} --skip "$vskip" \
          ${BENCH_ARGS:-} >> "$OUT/variants/$1.log" 2>&1)
      }
      for dir in build/variants/*/; do
        name=$(basename "$dir")
        vselect=(-k "${VARIANT_TESTS_K:-gluon}")
        [ "${VARIANT_TESTS_K:-}" = all ] && vselect=()
        vtests=${VARIANT_TESTS:-tests/test_kernels.py}
        vlimit=${VARIANT_TESTS_TIMEOUT:-150}
        case " ${VARIANT_FULL:-} " in *" $name "*) vselect=(); vtests=tests/; vlimit=330;; esac
        stamp "variant $name: tests ($vtests)"
        (cd "$dir" && PYTHONPATH=$PWD TRITON_CACHE_DIR=$PWD/.tcache/triton \
          timeout $vlimit $PY -m pytest -q -m gpu -p no:cacheprovider -n "${PYTEST_WORKERS:-8}" \
          --timeout 240 "${vselect[@]}" $vtests -rf \
          > "$OUT/variants/$name.tests.log" 2>&1; \
          tail -3 "$OUT/variants/$name.tests.log")
      done
      for round in $(seq 1 "${VARIANT_ROUNDS:-2}"); do
        stamp "variants: bench round $round (main, then each variant)"
        vbench main . "$round"
        for dir in build/variants/*/; do vbench "$(basename "$dir")" "$dir" "$round"; done
      done
      $PY benchmarks/ab_compare.py "$OUT/variants" --base main --json "$OUT/variants/compare.json" \
        | tee "$OUT/variants/compare.txt"
      if [ -n "${VARIANT_TIMELINE:-}" ]; then   # each tree's work-item timelines, main's first
        for dir in . build/variants/*/; do
          name=$(basename "$(cd "$dir" && pwd)"); [ "$dir" = . ] && name=main
          stamp "variants: timeline of $name"
          (cd "$dir" && PYTHONPATH=$PWD TRITON_CACHE_DIR=$PWD/.tcache/triton \
            timeout ${TIMELINE_TIMEOUT:-240} $PY benchmarks/item_timeline.py \
            --json "$OUT/variants/$name.timeline.json" \
            ${TIMELINE_SHAPES:+--shapes "$TIMELINE_SHAPES"} \
            2>&1 | grep -v Warning > "$OUT/variants/$name.timeline.log"; \
            tail -4 "$OUT/variants/$name.timeline.log")
        done
      fi
      ;;
    spread)
      # the Gluon backward alone at several allocator states in one process (why the ACP
      # backward's time moves between runs), into $OUT/bwd_spread.json / .log
      stamp "Gluon backward spread (benchmarks/bwd_spread.py)"
      timeout ${SPREAD_TIMEOUT:-240} $PY benchmarks/bwd_spread.py ${SPREAD_ARGS:-} \
        --json "$OUT/bwd_spread.json" 2>&1 | tee "$OUT/bwd_spread.log" | grep -v Warning
      ;;
    choice)
      stamp "engine choice: tl against Gluon per direction"
      timeout ${CHOICE_TIMEOUT:-400} $PY benchmarks/bench_attention.py --json "$OUT/choice_bench.json" \
        --shapes "${CHOICE_SHAPES:-B8-T4096-H24-D64,B4-T8192-H24-D64,B2-T16384-H24-D64,B4-T4096-H16-D128,B1-T16384-H16-D128}" \
        --skip flash,flex,fla,fox-op,cudnn,arctic-fox-acp,arctic-fox-dense,gtl-acp,gtl-dense \
        ${BENCH_ROUNDS:+--rounds "$BENCH_ROUNDS"} ${BENCH_ARGS:-} > "$OUT/choice_bench.log" 2>&1
      tail -4 "$OUT/choice_bench.log"
      $PY benchmarks/engine_choice.py "$OUT/choice_bench.json" --json "$OUT/choice.json" \
        2>&1 | tee "$OUT/choice.txt"
      ;;
    ncu)
      for shape in ${NCU_SHAPES:-B2-T16384-H24-D64 B1-T16384-H16-D128}; do
        stamp "ncu $shape"
        timeout 200 ncu --clock-control none --profile-from-start off --csv --page raw \
          --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
          --section Occupancy --section LaunchStats --section InstructionStats \
          $PY benchmarks/ncu_kernels.py --shape "$shape" > "$OUT/ncu_$shape.csv" 2> "$OUT/ncu_$shape.err"
        $PY benchmarks/ncu_kernels.py --summarise "$OUT/ncu_$shape.csv" 2>&1 | tee "$OUT/ncu_$shape.txt"
      done
      ;;
    ncusrc)
      # per-instruction stall samples of one kernel per ';'-separated entry of NCUSRC
      # ("NAME KERNEL_REGEX SHAPE [--prune]"; default one entry from NCU_KERNEL / NCU_SHAPE):
      # the report, its SASS page as CSV and the details page (SourceCounters: top stall
      # locations), into $OUT/ncusrc_NAME.*
      IFS=';' read -ra entries <<< "${NCUSRC:-bwd ${NCU_KERNEL:-_gluon_bwd} ${NCU_SHAPE:-B8-T4096-H24-D64}}"
      for entry in "${entries[@]}"; do
        read -r name kernel shape extra <<< "$entry"
        stamp "ncu source counters $name: $kernel at $shape $extra"
        rep=$OUT/ncusrc_$name
        timeout ${NCUSRC_TIMEOUT:-150} ncu --clock-control none --profile-from-start off \
          --kernel-name "regex:$kernel" --launch-count 1 --section SourceCounters \
          --section WarpStateStats -o "$rep" -f \
          $PY benchmarks/ncu_kernels.py --shape "$shape" $extra > "$rep.log" 2>&1
        ncu -i "$rep.ncu-rep" --page source --csv --print-source sass > "${rep}_sass.csv" 2>&1
        ncu -i "$rep.ncu-rep" --page details > "${rep}_details.txt" 2>&1
        tail -20 "${rep}_details.txt"
        $PY benchmarks/ncu_source_summary.py "${rep}_sass.csv" --json "${rep}_summary.json" \
          2>&1 | tee "${rep}_summary.txt"
      done
      ;;
    decode)
      stamp "decode kernels (bench_decode_kernel.py)"
      timeout ${DECODE_TIMEOUT:-300} $PY benchmarks/bench_decode_kernel.py \
        --json "$OUT/decode_kernel.json" > "$OUT/decode_kernel.log" 2>&1
      grep -E "Error|error" "$OUT/decode_kernel.log" | head -5
      tail -40 "$OUT/decode_kernel.log"
      ;;
    gendecode)
      each_args "${GEN_DECODE:?gendecode needs GEN_DECODE}" run_gendecode
      ;;
    gluonbwd)
      stamp "Gluon backward against tl and float64 (check_gluon_bwd.py)"
      timeout ${GLUONBWD_TIMEOUT:-400} $PY benchmarks/check_gluon_bwd.py ${GLUONBWD_CASES:+--cases "$GLUONBWD_CASES"} \
        --json "$OUT/gluon_bwd_check.json" 2>&1 | tee "$OUT/gluon_bwd_check.log" | tail -30
      ;;
    bench)
      stamp "benchmark"
      cfg=${CONFIGS:-}
      if [ -z "$cfg" ] && [ -f "$OUT/sweep.json" ]; then cfg=$OUT/sweep.json; fi
      timeout 400 $PY benchmarks/bench_attention.py --json "$OUT/bench.json" \
        ${cfg:+--configs "$cfg"} ${SHAPES:+--shapes "$SHAPES"} ${SKIP:+--skip "$SKIP"} \
        ${BENCH_ROUNDS:+--rounds "$BENCH_ROUNDS"} ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
      grep -E "Error|error" "$OUT/bench.log" | head -5
      tail -24 "$OUT/bench.log"
      train_json=()
      for f in "$OUT"/bench_train*.json; do [ -f "$f" ] && train_json+=("$f"); done
      [ ${#train_json[@]} -gt 0 ] && train_json=(--train "${train_json[@]}")
      $PY benchmarks/targets.py "$OUT/bench.json" "${train_json[@]}" --json "$OUT/targets.json" \
        2>&1 | tee "$OUT/targets.txt"
      ;;
  esac
  pack
done
pack
ls -la "$OUT" "$TOP"
stamp "done"
