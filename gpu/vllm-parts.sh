#!/usr/bin/env bash
# Cut the vLLM bundle (built by the workplace's shared/gpu/bundle.sh into ~/.cache/qwenopt-gpu-bundle) into parts
# that each fit one device call beside this repository's tracked tree (64 MiB in all travel per call): part size =
# 64 MiB - the tree - 3 MB. bitsandbytes (43 MB, only hf-nf4 needs it) is left out unless WITH_BNB=1.
# Send OUT/p0 .. OUT/pN one call each (carry [".gpu2/pK"], `mkdir -p /tmp/parts && cp .gpu2/pK/* /tmp/parts/`),
# then on the host: `bash /tmp/parts/unbundle.sh /tmp/parts /tmp/site` and PYTHONPATH=/tmp/site.
#   usage: gpu/vllm-parts.sh OUT        (e.g. .gpu2, listed in .git/info/exclude)
set -euo pipefail
out=${1:?usage: vllm-parts.sh OUT}
cache=${QWENOPT_BUNDLE_CACHE:-$HOME/.cache/qwenopt-gpu-bundle}
shared=${QWENOPT_SHARED_GPU:-$(git rev-parse --show-toplevel)/../shared/gpu}
[ -f "$cache/vllm.tar.zst" ] || { echo "no $cache/vllm.tar.zst: run $shared/bundle.sh first" >&2; exit 2; }
# what travels is measured as a tar of the tracked files (its 512-byte headers and padding count: 1,500 small files
# add about 1.5 MB to the bytes `du -b` sums)
tree=$(git ls-files -z | tar --null -cf - -T - | wc -c)
size=$(( 64 * 1024 * 1024 - tree - 3000000 ))
[ "$size" -gt 5000000 ] || { echo "the tracked tree ($tree bytes) leaves no room for parts" >&2; exit 2; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wheels"
cp "$cache"/wheels/*.whl "$work/wheels/"
[ "${WITH_BNB:-0}" = 1 ] || rm -f "$work"/wheels/bitsandbytes-*
ln -s "$cache/vllm.tar.zst" "$work/vllm.tar.zst"
rm -rf "$out" && mkdir -p "$out"
tar -C "$work" -chf - wheels vllm.tar.zst | split -b "$size" -d -a 3 - "$work/part."
for f in "$work"/part.*; do n=$((10#${f##*.})); mkdir -p "$out/p$n"; mv "$f" "$out/p$n/part.$n"; done
if [ "${WITH_BNB:-0}" = 1 ]; then cp "$shared/unbundle.sh" "$out/p0/"
else sed -e 's/import vllm, bitsandbytes, optuna/import vllm, optuna/' \
         -e "s/, 'bitsandbytes', bitsandbytes.__version__//" "$shared/unbundle.sh" > "$out/p0/unbundle.sh"; fi
echo "$(ls -d "$out"/p* | wc -l) parts of at most $size bytes in $out (tree: $tree bytes)"
