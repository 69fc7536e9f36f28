#!/usr/bin/env bash
# Unpacks the FoX authors' ACP kernel (github.com/zhixuan-lin/arctic-fox: forgetting_attention.py,
# one file, plus its LICENSE) from a git copy of that repository into .peers/arctic-fox/ (git-ignored),
# for the arctic-fox rows of benchmarks/bench_attention.py. Nothing of it enters this repository.
#
#   bash benchmarks/fetch_arctic_fox.sh GIT_DIR [REF]     # a bare mirror or a clone; REF: HEAD
#   (ARCTIC_FOX_PATH=folder: unpack there instead, the same variable bench_attention.py reads)
#
# On the GPU machine the rows need .peers in the device call's carry list (about 60 KB).
set -eu
src=${1:?usage: fetch_arctic_fox.sh GIT_DIR [REF]}
ref=${2:-HEAD}
[ -d "$src/.git" ] && src=$src/.git
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${ARCTIC_FOX_PATH:-$root/.peers/arctic-fox}
mkdir -p "$dest"
rm -f "$dest/forgetting_attention.py" "$dest/LICENSE" "$dest/COMMIT"
git --git-dir="$src" archive "$ref" forgetting_attention.py LICENSE | tar -x -C "$dest"
git --git-dir="$src" rev-parse "$ref^{commit}" > "$dest/COMMIT"
echo "arctic-fox $(cat "$dest/COMMIT") -> $dest ($(du -sk "$dest" | cut -f1) KB)"
