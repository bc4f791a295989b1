#!/usr/bin/env bash
# Build .whlg/: gptqmodel, optimum and the small dependencies the GPU host lacks, as Python 3.12 wheels, for
# benchmarks/hf-gptq-h100.sh (the host has no network). gptqmodel 7.5 builds as a pure-Python wheel: its CUDA
# kernels are compiled just in time on the GPU host. pypcre links libpcre2-8, which travels beside the wheels.
set -eu
PY=${PY:-python3.12}
mkdir -p .whlg/lib
"$PY" -m pip wheel --no-deps -w .whlg gptqmodel==7.5.0 optimum==2.3.0 Defuser==0.0.28 Device-SMI==0.5.7 \
  LogBar==0.4.15 TokeNicer==0.0.14 PyPcre==0.6.4 threadpoolctl==3.8.0 dill==0.4.1 requests==2.34.2 protobuf==7.36.2
cp -L "$(ldconfig -p | awk '/libpcre2-8.so.0 /{print $NF; exit}')" .whlg/lib/
ls .whlg
