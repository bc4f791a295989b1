"""Every result kind's columns, in one place: a column is named here and nowhere else.

Kinds: `bench` (one row per offline cell; `tune` writes the same rows), `load` (one row per online load
level and request class), `quality` (one perplexity row per run) and `matrix` (the cost matrix).
`result_kind` tells them apart by their header, so `matrix` and `report` can take any folder.
"""
from __future__ import annotations

SCHEMA_VERSION = 1
LOAD_SCHEMA_VERSION = 2  # 1 was the load row before send lag, ITL and goodput (no schema_version column)

FINGERPRINT = [
    "gpu_name", "gpu_uuid", "gpu_count", "driver", "cuda", "torch", "transformers", "vllm", "bitsandbytes", "gptqmodel",
    "python", "qwenopt", "git_sha", "host",
]

IDENTITY = [
    "schema_version", "run_id", "timestamp", "regime", "engine", "model", "weights", "dtype", "quant", "attn",
    "decode_mode", "device", "tp", "pp", "batch_size", "input_len", "output_len", "warmup", "repeats", "status", "error",
]
METRICS = [
    "samples", "latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_mean_s",
    "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
    "output_tok_s", "total_tok_s", "req_s",
    "load_s", "load_from", "gpu_mem_peak_gib", "torch_peak_alloc_gib", "torch_peak_reserved_gib", "weights_gib",
    "kv_cache_gib", "kv_capacity_tokens", "gpu_util_pct", "power_w", "energy_j_per_tok",
    "mem_bw_gbs", "matmul_tflops", "roofline_tok_s", "roofline_eff",
    "timings",  # independent timings a percentile rests on: a static batch gives one per repeat, not one per request
]
BENCH_COLUMNS = IDENTITY + METRICS + FINGERPRINT
COLUMNS = BENCH_COLUMNS  # the name older modules use
# Columns added after files of this schema version were written: read as empty where absent, and an older
# file is given them (rewritten once, under the lock) when a row is appended to it.
ADDED_LATER = ("gptqmodel", "timings", "gateway", "arrived_req_s", "prefix_cache_hit_rate", "tail_ttft_s",
               "tail_decode_s", "tail_stall_s", "gpu_uuid", "compile_cache")  # gateway: the load
# rows' gateway settings; arrived_req_s: the rate the level's arrivals came at, which a short level's Poisson draw can
# put well off `rate`; prefix_cache_hit_rate: the share of the level's prompt tokens the server served from cache;
# compile_cache: whether the vLLM start compiled its graphs or loaded them from vLLM's cache (launcher.compile_cache)
# Identifiers read as text whatever they look like: a 12-hex run_id of digits and one "e" ("123456e78901") would
# otherwise read as a float, and no row would match its run again (an isolated bench run then failed its own cells)
TEXT_COLUMNS = ["run_id", "study", "git_sha", "host", "gpu_uuid"]
INT_COLUMNS = ["schema_version", "tp", "pp", "batch_size", "input_len", "output_len", "warmup", "repeats"]
STATUSES = ("ok", "invalid", "oom", "error")

# One row per load level and request class (`class` = "all" for the level's total).
# Latency names follow `vllm bench serve`: TTFT (scheduled arrival -> first token), TPOT (per request,
# (E2E - TTFT) / (tokens - 1)), ITL (every gap between streamed tokens, pooled), E2E as latency_* (E2EL).
LOAD_IDENTITY = [
    "schema_version", "run_id", "timestamp", "level", "class", "status", "error",
    "endpoint", "server", "regime", "model", "weights", "quant", "attn", "serve_mode", "tp", "pp", "gpus",
    "engine_args", "via_gateway", "gateway", "startup_s", "compile_cache",
    "mode", "arrival", "burstiness", "rate", "concurrency", "duration_s", "num_requests", "warmup_requests",
    "workload", "input_len", "output_len", "timeout_s", "seed", "slo", "max_send_lag_ms",
]
LOAD_METRICS = [
    "sent", "arrived_req_s", "completed", "failed", "timeouts", "truncated", "short", "overlong", "elapsed_s",
    "samples",
    "latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_mean_s",
    "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "ttft_mean_ms",
    "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms", "tpot_mean_ms",
    "itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "itl_max_ms", "itl_mean_ms",
    "tail_ttft_s", "tail_decode_s", "tail_stall_s",  # where the slowest 1% spent their E2E (serving/metrics.py)
    "send_lag_p50_ms", "send_lag_p99_ms",
    "req_s", "output_tok_s", "total_tok_s", "goodput_req_s", "slo_met_pct", "concurrency_mean",
    "prefix_cache_hit_rate",  # vLLM's /metrics over the level (server_metrics.py); empty where the server has none
    "gpu_mem_peak_gib", "gpu_util_pct", "power_w", "energy_j_per_tok",
]
LOAD_COLUMNS = LOAD_IDENTITY + LOAD_METRICS + FINGERPRINT
LOAD_STATUSES = ("ok", "client-bound", "failed", "error")

# `tune --launch`: every load level of a trial is a load row plus these (a load file with extra columns, so
# matrix, compare and report read it as load rows). One trial = one server start with one configuration.
TRIAL_COLUMNS = [
    "study",  # a hash of the search's settings (regime, workload, SLO, objective, space): --resume goes on with it
    "trial",  # 0 is the engine's defaults (vLLM's or transformers serve's), measured in the same search
    "search_step",  # how the configuration was chosen: default, random (the sampler's start-up), tpe
    "trial_config",  # JSON of the knobs set away from their default, by vLLM 0.26's engine-argument names or
    # transformers serve's parameter names (continuous_batching, cb_num_blocks, ...)
    "trial_status",  # the row's verdict: ok (the level met the SLO), missed-slo, oom, start-failed, failed
    "trial_reason",  # why not ok: the SLO figure that missed, or the error
    "spec_acceptance_assumed",  # speculative decoding: the per-token acceptance rate ASSUMED (synthetic), never measured
]
TUNE_LOAD_COLUMNS = LOAD_COLUMNS + TRIAL_COLUMNS
TRIAL_STATUSES = ("ok", "missed-slo", "oom", "start-failed", "failed", "interrupted")  # interrupted: trials file only

QUALITY_COLUMNS = [
    "timestamp", "regime", "model", "weights", "dtype", "quant", "device", "tokenizer", "tokens", "window",
    "perplexity", "nll_mean",
]

# One row per configuration and workload, at its highest load within the SLO; `source` says whether it comes
# from offline static batches (bench/tune rows) or from the online service (load rows): tables never mix them.
MATRIX_COLUMNS = [
    "source", "workload", "config", "input_len", "output_len", "meets_slo", "batch_size", "rate", "concurrency",
    "gpus", "concurrency_per_gpu", "latency_mean_s", "latency_p99_s", "ttft_p99_ms", "samples", "gpu_util_pct",
    "req_s", "requests_per_day", "output_tok_s", "total_tok_s", "relative_unit_cost", "usd_per_1m_output_tokens",
    "usd_per_1m_total_tokens", "energy_j_per_tok", "gpus_for_target",
]

KINDS = {"bench": BENCH_COLUMNS, "load": LOAD_COLUMNS, "tune-load": TUNE_LOAD_COLUMNS, "quality": QUALITY_COLUMNS, "matrix": MATRIX_COLUMNS}
