#!/usr/bin/env bash
# Unpacks git refs (branches, commits) of this repository into build/variants/NAME (NAME: the
# ref with '/' as '_'), for `bash benchmarks/run_gpu_kernels.sh variants` on the GPU machine,
# which has no repository: carry `build` in the device call. Replaces what was there.
#   bash benchmarks/prepare_variants.sh gluon-fwd-3wg gluon-split-bwd
set -eu
cd "$(dirname "$0")/.."
rm -rf build/variants
for ref in "$@"; do
  dir=build/variants/${ref//\//_}
  mkdir -p "$dir"
  git archive "$ref" | tar -x -C "$dir"
  echo "$ref -> $dir ($(git rev-parse --short "$ref"))"
done
