#!/usr/bin/env bash
# hf-gptq on the GPU host (issue 3): random GPTQ int4 g128 weights of the Qwen2.5-7B architecture, run through
# transformers + optimum + gptqmodel with each kernel named on the command line.
#   bash benchmarks/hf-gptq-h100.sh triton marlin       (results and logs land under $OUT)
# The host has no network: gptqmodel, optimum and their small pure-Python dependencies travel as wheels in .whlg/
# (benchmarks/build-gptq-wheels.sh builds them). gptqmodel's
# heavy optional imports (datasets, pyarrow, torchao) are not needed to load and run GPTQ layers.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/results" "$OUT/logs"
export LD_LIBRARY_PATH="$PWD/.whlg/lib:${LD_LIBRARY_PATH:-}"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16  # gptqmodel JIT-builds its CUDA kernels (Marlin, Machete) for this GPU only
missing=""
for pair in requests:requests google.protobuf:protobuf dill:dill threadpoolctl:threadpoolctl; do
  python3 -c "import ${pair%%:*}" 2>/dev/null || missing="$missing ${pair#*:}"
done
python3 -m pip install -q --no-index --no-deps --find-links .whlg \
  gptqmodel optimum defuser device-smi logbar tokenicer pypcre $missing 2>&1 | tail -3
python3 -m qwenopt env | tee "$OUT/logs/env.log"
python3 -c "import gptqmodel, optimum.version; print('gptqmodel', gptqmodel.__version__, 'optimum', optimum.version.__version__)" \
  2>&1 | tail -1 | tee -a "$OUT/logs/env.log"
for kernel in "$@"; do
  timeout "${BENCH_TIMEOUT:-540}" python3 -m qwenopt bench --config benchmarks/sweeps/hf-h100.toml --regime hf-gptq \
    --kernel "$kernel" --out "$OUT/results/hf-gptq-$kernel"_qwen2.5-7b.csv 2>&1 | tee "$OUT/logs/hf-gptq-$kernel.log"
done
