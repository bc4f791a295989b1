#!/usr/bin/env bash
# The online tuner's GPU proof (issue 13): `qwenopt tune --launch` on one H100 with vLLM 0.26, random weights of
# Qwen2.5-7B, input 512 / output 128 tokens, E2E P99 <= 2 s, objective goodput (req/s within the SLO).
#
# Why this workload and SLO: it is the online cost matrix's (results/h100/online/matrix_in512_out128_p99-2s.md),
# so each trial's rows sit next to the `qwenopt load` rows measured there, and 2 s for a paragraph of answer to a
# few paragraphs of context is an interactive chat target.
#
# Every call runs one resumable piece of a search and stops itself within 9 minutes: the search's budget is 7
# minutes (no trial starts whose expected time would overrun it), and `timeout -s INT` (Ctrl-C: the server is stopped,
# finished trials kept) caps the whole call at 540 s. Repeat a step until it prints "search: N trials" with N equal
# to TRIALS (or "every configuration ... measured"); each repeat goes on with the trials already in $RESULTS.
#
#   bash benchmarks/tune_h100.sh int4    # vllm-int4 (AWQ): batch limits, KV-cache type, stream interval
#   bash benchmarks/tune_h100.sh int4    # ... again, until the search is done
#   bash benchmarks/tune_h100.sh fp16    # vllm-fp16: the same knobs
#   bash benchmarks/tune_h100.sh fp16    # ... again
#   bash benchmarks/tune_h100.sh int4-fast   # vllm-int4 at E2E P99 <= 0.8 s: kernel, chunk limit, KV type, stream
#   bash benchmarks/tune_h100.sh spec    # speculative decoding what-if on vllm-int4: a random EAGLE-3 head at
#                                        # ASSUMED acceptance 0.6 / 0.8 (offline first: benchmarks/spec_h100.py)
#   bash benchmarks/tune_h100.sh spec-load   # the same what-if as load levels: no speculation vs the head at
#                                            # ASSUMED acceptance 0.8 (SPEC=a0.6 for 0.6), 4-48 req/s (RATES=, NUM=)
#   bash benchmarks/tune_h100.sh confirm-int4   # the winner against the defaults again: fresh starts, the same
#   bash benchmarks/tune_h100.sh confirm-fp16   # arrivals, a ladder of rates (qwenopt confirm; two
#                                               # starts, about 9 minutes; ROUND=1 for a second round)
#   bash benchmarks/tune_h100.sh show    # every search's outcome (no GPU)
#
# The int4 space leaves the Marlin kernel out: the first search (results/h100/tune/first-search) measured Marlin
# configurations at 30-31 req/s of saturation against the defaults' (Machete) 55.6 at this workload, so at this SLO
# a trial on it is a trial lost (Marlin is the kernel for a strict latency SLO at low load; `--space
# linear_backend=auto,marlin` puts it back). async_scheduling stays at vLLM's default (on; its own docstring:
# "helps to avoid gaps in GPU utilization, leading to better latency and throughput").
#
# Per trial: one `vllm serve` start, an 8 s closed-loop burst of 256 users (the saturation throughput), then 3
# (trial 0, the defaults: 5) open-loop rates bisected below it (the first 5% above the best goodput so far; more
# halvings while none has met the SLO), each level at least 8 s and 300 requests long (tune's --level-requests
# default) and draining its requests.
# With engine starts of 87-151 s (measured), expect 2.5-4 minutes a trial: a call finishes 2-3 trials, and
# TRIALS=6 (trial 0 = vLLM's defaults, then 5 chosen by the search) 2-3 calls per regime; raise TRIALS for a
# longer search (the calls just go on).
# TRY='knob=value;...' measures that configuration right after the defaults (tune's --try), e.g.
# TRY='linear_backend=marlin' int4-fast: Marlin alone, where the search had only tried it with fp8 KV and stream 4.
# Results: $RESULTS/tune_{int4,fp16,spec}.csv (load rows with trial columns), .trials.jsonl (one line per trial),
# .outcome.txt (the table, winner vs defaults, Pareto front, serve line). Commit the three files of each search.
# Each device call starts from the working tree it was sent, so bring every call's files back into that tree before
# the next call (a search resumed, or a confirm, on the committed copy would not see the trials of the call before:
# on 2026-12-02 two confirm calls read the committed 3-trial fp16 search and measured nothing: a `cp -n` from a copy
# kept in the device's /tmp had left the tree's older files in place, and the next backup overwrote the newer copy).
set -uo pipefail
STEP=${1:?give a step: int4, fp16, int4-fast, spec, spec-load, confirm-int4, confirm-fp16 or show}
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -o 'H[0-9]\+' | tr H h)
# one folder per card; v2: searches whose levels each send prompts of their own (commit b7fdeb5). The searches in
# results/<card>/tune itself resent the first level's prompts, which vLLM's prefix cache then served (README)
RESULTS=${RESULTS:-results/${card:-h100}/tune/v2}
TRIALS=${TRIALS:-6}
CAP=${CAP:-540}              # seconds this call may take (SIGINT then); lower it where the call does other work too
BUDGET=${BUDGET:-7}          # the search's own budget in minutes: no trial starts that would overrun it
mkdir -p "$RESULTS"
export VLLM_USE_FLASHINFER_SAMPLER=0  # its JIT build adds ~100 s to a fresh start; greedy load does not use it
# FRESH=1: every start compiles its torch.compile graphs (vLLM's own VLLM_DISABLE_COMPILE_CACHE), so starts compare on
# equal terms whatever their order: in both A/A runs on the H200 the one start that compiled (always a
# configuration's first) had the lowest P99 at every rate, the others had loaded their graphs from the cache. Costs
# the compile each start: torch.compile took 16.8-33.5 s in 21 H200 logs that compiled, 3.2-5.9 s in 14 that loaded. The rows'
# compile_cache column says which each start did.
[ "${FRESH:-0}" = 1 ] && export VLLM_DISABLE_COMPILE_CACHE=1
COMMON=(--weights random --input-len 512 --output-len 128 --slo e2e=2s --objective goodput
        --level-duration 8 --probes 3 --burst-users 256 --budget-minutes "$BUDGET" --resume)
run() {  # the call's own cap: SIGINT, which qwenopt turns into a clean stop of the server
  echo "\$ python3 -m qwenopt tune $* ${TRY:+--try $TRY}"
  timeout -s INT "$CAP" python3 -m qwenopt tune "$@" ${TRY:+--try "$TRY"}
  code=$?
  echo "exit code $code (0: a trial met the SLO; 1: none did yet; 130: the $CAP s cap interrupted a trial)"
}

case "$STEP" in
int4)
  run --launch vllm-int4 --quant awq "${COMMON[@]}" --trials "$TRIALS" --out "$RESULTS/tune_int4.csv" \
    --space "max_num_seqs=default,128,256;max_num_batched_tokens=default,2048,4096,16384;kv_cache_dtype=auto,fp8;stream_interval=default,4" ;;
fp16)
  run --launch vllm-fp16 "${COMMON[@]}" --trials "$TRIALS" --out "$RESULTS/tune_fp16.csv" \
    --space "max_num_seqs=default,128,256;max_num_batched_tokens=default,2048,4096,16384;kv_cache_dtype=auto,fp8;stream_interval=default,4" ;;
int4-fast)  # a strict latency SLO, where the int4 kernel choice may flip: 128 tokens within 0.8 s at P99 (a voice or
       # agent turn). Basis (H100, results/h100/online): at 4 req/s AWQ's E2E mean was 0.52 s with Marlin and 0.66 s
       # with Machete (the default), TPOT P50 3.7 against 4.6 ms. At this SLO the load stays far below saturation,
       # so a step rarely holds more than a prompt or two: the chunk limit (2048: shorter prefill stalls for the
       # decoding requests), the KV type and the stream interval join the kernel; max_num_seqs would not bind.
  run --launch vllm-int4 --quant awq "${COMMON[@]/e2e=2s/e2e=0.8s}" --trials "$TRIALS" --out "$RESULTS/tune_int4-fast.csv" \
    --space "linear_backend=auto,marlin;max_num_batched_tokens=default,2048;kv_cache_dtype=auto,fp8;stream_interval=default,4" ;;
spec)  # the acceptance rates are ASSUMED (vLLM's synthetic rejection sampler), never measured: a what-if. The
       # drafter is the EAGLE-3 head (spec_method's default); the 0.5B draft model lost offline (issue 13)
  run --launch vllm-int4 --quant awq "${COMMON[@]}" --trials 5 --out "$RESULTS/tune_spec.csv" \
    --space "linear_backend=auto" --spec-acceptance 0.6,0.8 ;;
spec-load)  # where speculation stops paying at load, directly: vllm-int4 (AWQ) with no speculation and with a
       # random EAGLE-3 head, 2 draft tokens, at an ASSUMED per-token acceptance (vLLM's synthetic sampler: 0.6 ->
       # 1.96 tokens a step, 0.8 -> 2.44), each on its own start, on one ladder of rates, NUM (120) measured requests
       # a level (at 4 req/s 30 s; about 80 s of levels a start). SPEC="off a0.8" (the default, 7.3 minutes on the
       # H200) or "a0.6" picks the starts of this call; ROUND=k the seed. Offline the head gained 1.58-2.29x at batch
       # 1-64 (results/h200/spec); at load it competes with the batch for every step. Read the rows side by side, and
       # the rate where the head stops paying, with `python3 benchmarks/spec_load_table.py $RESULTS/spec_load.csv`.
       # Measured (H200, 2026-12-02): at 0.8 the head paid at every rate of 4-48 req/s (120 requests a level), and
       # with RATES=40,48,56,64,72 NUM=400 (a start about 3.3 minutes) at 0.8 and 0.6 up to past saturation, adding
       # no capacity there (README). TAG=name: rows in $RESULTS/name.csv (default spec_load), so a new ladder or a
       # repeat start keeps its own file; the table reads several and averages a configuration's starts.
  for cfg in ${SPEC:-off a0.8}; do
    case "$cfg" in
      off) spec=() ;;
      a0.6|a0.8) spec=(--spec-acceptance "${cfg#a}" --spec-tokens 2) ;;  # rates [a, a*a]: load writes them
      *) echo "unknown SPEC $cfg (off, a0.6, a0.8)" >&2; exit 2 ;;
    esac
    echo "\$ spec-load $cfg"
    timeout -s INT "$CAP" python3 -m qwenopt load --launch vllm-int4 --quant awq --weights random --input-len 512 \
      --output-len 128 --rate "${RATES:-4,8,16,24,32,40,48}" --num-requests "${NUM:-120}" --warmup 10 --slo e2e=2s \
      --seed "${ROUND:-0}" "${spec[@]}" --server-log "$RESULTS/${TAG:-spec_load}_${cfg}_${ROUND:-0}.log" \
      --out "$RESULTS/${TAG:-spec_load}.csv"
    echo "exit code $?"
  done ;;
confirm-int4|confirm-fp16|confirm-int4-fast)  # ROUND=k: the round and its arrivals' seed; RATES=a,b,..: the
       # ladder (default five from 60% of the defaults' best level to the trial's, one step above; give it when
       # several trials share the folder); TRIAL=n: the trial re-measured (default the winner; TRIAL=0: an A/A run, the defaults on two
       # starts, best with CONFIRM_DIR=$RESULTS/aa_int4); ONLY=defaults|trial: one start this call
  timeout -s INT "$CAP" python3 -m qwenopt confirm "$RESULTS/tune_${STEP#confirm-}.csv" \
    "${CONFIRM_DIR:-$RESULTS/confirm_${STEP#confirm-}}" --round "${ROUND:-0}" ${RATES:+--rates "$RATES"} ${ONLY:+--only "$ONLY"} \
    ${TRIAL:+--trial "$TRIAL"} ;;
show)
  for f in "$RESULTS"/*.outcome.txt; do echo "== $f"; cat "$f"; done ;;
*) echo "unknown step $STEP" >&2; exit 2 ;;
esac
