#!/usr/bin/env bash
# Build an offline bundle of flash-attn-4 and its own dependencies (fa4-wheels.txt) for the air-gapped
# GPU host (python 3.12, torch 2.11.0+cu130 already installed), split into folders OUT/p0, OUT/p1, ...
# of at most 30 MB each, so one folder rides along with the ~31 MB repo in one device call (64 MB cap).
# On the host, fa4-unbundle.sh installs the collected parts into a folder of their own.
#   usage: fa4-bundle.sh OUT        (downloads ~100 MB once; cached in ~/.cache/qwenopt-fa4-bundle)
set -euo pipefail
out=${1:?usage: fa4-bundle.sh OUT}
here=$(cd "$(dirname "$0")" && pwd)
cache=${QWENOPT_FA4_CACHE:-$HOME/.cache/qwenopt-fa4-bundle}
mkdir -p "$cache/wheels"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp)
for p in 39 35 34 31 28 27 24 17; do plat+=(--platform "manylinux_2_${p}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --pre "${plat[@]}" -d "$cache/wheels" -r "$here/fa4-wheels.txt"
# Exactly the listed wheels (no stale extras from an older list), and every requirement met by the
# list or by the host: nothing may re-pull torch or drift to another version at install time.
# nvidia-cutlass-dsl asks for its CUDA 12 libraries; the host's torch is cu130, so the list brings the
# CUDA 13 ones (its [cu13] extra) instead, and the DSL loads the flavor the driver supports.
python3 "$here/fa4_check_wheels.py" "$here/fa4-wheels.txt" "$cache/wheels" \
  torch typing-extensions cuda-bindings nvidia-cutlass-dsl-libs-cu12
rm -rf "$out" && mkdir -p "$out"
(cd "$cache" && python3 "$here/fa4_check_wheels.py" --list "$here/fa4-wheels.txt" wheels) \
  | tar -C "$cache" -cf - -T - | split -b 30000000 -d -a 1 - "$out/part."
i=0; for f in "$out"/part.*; do mkdir -p "$out/p$i"; mv "$f" "$out/p$i/"; i=$((i+1)); done
echo "fa4 bundle: $i parts in $out (p0..p$((i-1)))"; du -sh "$out"/p*
