#!/usr/bin/env bash
# On the GPU host: reassemble the parts that fa4-bundle.sh made and install them into TARGET
# (default /tmp/fa4site), apart from vLLM's folder. nvidia-cutlass-dsl finds its `cutlass` package
# through a .pth file, which --target folders do not run, so use both folders on the path:
#   PYTHONPATH=TARGET:TARGET/nvidia_cutlass_dsl/dsl_packages
#   usage: fa4-unbundle.sh PARTS_DIR [TARGET]     (PARTS_DIR holds part.0, part.1, ...)
set -euo pipefail
parts=${1:?usage: fa4-unbundle.sh PARTS_DIR [TARGET]}; target=${2:-/tmp/fa4site}
work=$(mktemp -d)
cat $(ls "$parts"/part.* | sort -t. -k2 -n) | tar -xf - -C "$work"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$target" "$work"/wheels/*.whl
rm -rf "$work"
PYTHONPATH="$target:$target/nvidia_cutlass_dsl/dsl_packages" python3 -c "
import importlib.metadata as md, flash_attn.cute, cutlass
print('installed flash-attn-4', md.version('flash-attn-4'), 'nvidia-cutlass-dsl', md.version('nvidia-cutlass-dsl'))"
echo "use: PYTHONPATH=$target:$target/nvidia_cutlass_dsl/dsl_packages"
