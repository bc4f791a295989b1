#!/usr/bin/env bash
# The gateway's GPU proof (issue 12), on one GPU host with vLLM, random weights of Qwen2.5-7B, vllm-fp16.
# Mixed web traffic, 80% short (64 in / 64 out) and 20% long (4,096 in / 256 out), at 0.8x, 1.0x and 1.5x
# the saturation rate: (a) FCFS without the gateway, (b) vLLM priority through the gateway (no admission
# control), (c) the same plus bounded admission; then the gateway's added latency at low load.
# One step per call (each starts its own vllm serve and stays under 10 minutes):
#
#   bash benchmarks/gateway_h100.sh saturation   # writes $RESULTS/gateway_rates.txt
#   bash benchmarks/gateway_h100.sh a            # FCFS, no gateway
#   bash benchmarks/gateway_h100.sh b            # --scheduling-policy priority, through the gateway
#   bash benchmarks/gateway_h100.sh c            # the same, at most $MAX_IN_FLIGHT upstream, 429 when full
#   bash benchmarks/gateway_h100.sh overhead     # one request at a time, direct vs gateway (bar: < 2 ms)
set -euo pipefail
STEP=${1:?give a step: saturation, a, b, c or overhead}
RESULTS=${RESULTS:-results/h100}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-64}
mkdir -p "$RESULTS"
COMMON=(--launch vllm-fp16 --weights random --max-model-len 8192 --mix "short=0.8:64:64,long=0.2:4096:256"
        --slo ttft=200ms)
rates() { cat "$RESULTS/gateway_rates.txt"; }

case "$STEP" in
saturation)  # FCFS sweep; its closed-loop burst row (256 users) is the saturation throughput
  python3 -m qwenopt load "${COMMON[@]}" --rate sweep --duration 20 --out "$RESULTS/gateway_saturation.csv" || true
  python3 - "$RESULTS/gateway_saturation.csv" > "$RESULTS/gateway_rates.txt" <<'PY'
import sys
import pandas as pd
rows = pd.read_csv(sys.argv[1])
sat = float(rows[(rows["mode"] == "closed") & (rows["class"] == "all")].iloc[-1]["req_s"])
print(",".join(f"{f * sat:.1f}" for f in (0.8, 1.0, 1.5)))
PY
  echo "rates (0.8x, 1.0x, 1.5x saturation): $(rates)" ;;
a)
  python3 -m qwenopt load "${COMMON[@]}" --rate "$(rates)" --duration 30 --out "$RESULTS/gateway_a_fcfs.csv" ;;
b)  # one CSV per configuration: the rows' via_gateway cannot tell (b) from (c)
  printf '[gateway]\nmax_in_flight = 0\n' > "$RESULTS/gateway_b.toml"
  python3 -m qwenopt load "${COMMON[@]}" --rate "$(rates)" --duration 30 --scheduling-policy priority --gateway \
    --gateway-config "$RESULTS/gateway_b.toml" --out "$RESULTS/gateway_b_priority.csv" ;;
c)
  printf '[gateway]\nmax_in_flight = %s\nqueue_high = 256\nqueue_medium = 64\nqueue_low = 32\n' "$MAX_IN_FLIGHT" \
    > "$RESULTS/gateway_c.toml"
  python3 -m qwenopt load "${COMMON[@]}" --rate "$(rates)" --duration 30 --scheduling-policy priority --gateway \
    --gateway-config "$RESULTS/gateway_c.toml" --out "$RESULTS/gateway_c_admission.csv" ;;
overhead)
  python3 - <<'PY' | tee "$RESULTS/gateway_overhead.txt"
import subprocess, sys
from qwenopt.bench import BenchOptions, plan_sweep
from qwenopt.serving.launcher import launch
plan = plan_sweep(BenchOptions(regime="vllm-fp16", model="qwen2.5-7b", weights="random", device="cuda",
                               max_model_len=8192, batch="1", input_len="64", output_len="64"))
with launch(plan.spec, plan.engine_options(), port=8000) as server:
    subprocess.run([sys.executable, "benchmarks/gateway_overhead.py", "--upstream", server.base_url,
                    "--requests", "300", "--tokens", "64"], check=True)
PY
  ;;
*) echo "unknown step $STEP" >&2; exit 2 ;;
esac
