#!/usr/bin/env bash
# Where does the send lag's tail come from? (issue 10: 2,000 req/s with send-lag P99 under 5 ms)
# One qwenopt worker against the known-timing capacity server, the same level run with four variants of the
# worker, interleaved, REPEATS times each: as is; without the record flusher during the level (records sent at the
# end); with the interpreter's thread switch interval cut from 5 ms to 0.5 ms; with the garbage collector off.
# Each variant is a copy of qwenopt patched with sed in a scratch folder; nothing here changes the package.
#   bash benchmarks/send_lag_probe.sh OUT [RATE] [REPEATS]    (server binary: bench-bin/capacity_server)
set -euo pipefail
OUT=${1:?give an output folder}; RATE=${2:-1600}; REPEATS=${3:-3}; DURATION=${DURATION:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd); SCRATCH=$(mktemp -d); mkdir -p "$OUT"
PORT=18777; "$ROOT/bench-bin/capacity_server" $PORT 20 2 > "$OUT/server.log" 2>&1 &
SERVER=$!; trap 'kill $SERVER 2>/dev/null; rm -rf "$SCRATCH"' EXIT; sleep 1
FREEZE='    gc.freeze()  # what exists now'
for variant in as-is no-flush switch-0.5ms gc-off; do
  mkdir -p "$SCRATCH/$variant"; cp -r "$ROOT/qwenopt" "$SCRATCH/$variant/"
  file="$SCRATCH/$variant/qwenopt/serving/loadgen.py"
  case $variant in
    no-flush) sed -i 's/^FLUSH_S = 0.05 /FLUSH_S = 1e9 /' "$file" ;;
    switch-0.5ms) sed -i "s/^$FREEZE/    __import__('sys').setswitchinterval(0.0005)\n&/" "$file" ;;
    gc-off) sed -i "s/^$FREEZE/    gc.disable()\n&/" "$file" ;;
  esac
done
for i in $(seq 1 "$REPEATS"); do
  for variant in as-is no-flush switch-0.5ms gc-off; do
    (cd "$SCRATCH/$variant" && PYTHONPATH="$SCRATCH/$variant" timeout 120 python3 -m qwenopt load \
      --endpoint http://127.0.0.1:$PORT/v1 --rate "$RATE" --duration "$DURATION" --input-len 32 --output-len 16 \
      --out "$OUT/${variant}_$i.csv" > "$OUT/${variant}_$i.log" 2>&1) || echo "$variant $i: exit $?"
  done
done
python3 - "$OUT" <<'PY'
import glob, json, sys
import numpy as np
rows = []
for path in sorted(glob.glob(f"{sys.argv[1]}/*.samples.jsonl")):
    samples = [json.loads(line) for line in open(path)][-1]["samples"]
    lag = np.array([s["send_lag_s"] for s in samples]) * 1e3
    ttft = np.array([s["ttft_s"] for s in samples if s.get("ttft_s") is not None]) * 1e3
    name = path.split("/")[-1].removesuffix(".samples.jsonl")
    rows.append((name, len(lag), np.percentile(lag, 50), np.percentile(lag, 99), lag.max(), int((lag > 5).sum()),
                 np.percentile(ttft, 50), np.percentile(ttft, 99)))
print(f"{'run':<16} {'requests':>8} {'lag50':>7} {'lag99':>7} {'lagmax':>7} {'>5ms':>5} {'ttft50':>7} {'ttft99':>7}")
for r in rows:
    print(f"{r[0]:<16} {r[1]:>8} {r[2]:>7.2f} {r[3]:>7.2f} {r[4]:>7.2f} {r[5]:>5} {r[6]:>7.2f} {r[7]:>7.2f}")
PY
