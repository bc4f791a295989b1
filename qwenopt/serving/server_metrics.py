"""What the server says about a level: its prefix-cache counters read from /metrics before and after.

Why: a level whose prompts the server has seen before is not the workload it claims. With vLLM's prefix caching on
(its default), a tune trial's later levels once resent level 1's prompts and reached a 97% hit rate on the H200
(results/h200/tune/confirm-prompt-reuse): their prefill came from cache and their P99 fell below the first level's
at twice its rate. Each level now has prompts of its own (Workload.for_level); this column shows it held, on every
row.
"""
from __future__ import annotations

# vLLM's counters (vllm/v1/metrics/loggers.py), in tokens; Prometheus adds _total to a counter's samples
QUERIES, HITS = "vllm:prefix_cache_queries", "vllm:prefix_cache_hits"


def metrics_url(base_url: str) -> str:
    """/metrics at the server's root: vLLM serves it beside /v1, not under it."""
    root = base_url.rstrip("/")
    return (root[:-3] if root.endswith("/v1") else root) + "/metrics"


def parse_counters(text: str) -> dict[str, float]:
    """{counter: its samples summed over labels (engines, models)} for the two prefix-cache counters found."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # the sample is NAME_total, whatever its TYPE line called the family
            name = sample.name.removesuffix("_total")
            if name in (QUERIES, HITS) and sample.name.endswith("_total"):
                found[name] = found.get(name, 0.0) + sample.value
    return found


def prefix_cache_counters(base_url: str | None, timeout_s: float = 2.0) -> dict[str, float] | None:
    """The server's prefix-cache counters now, or None where it has none to give (not vLLM, no prometheus-client
    here): the column is then left empty, never guessed."""
    if not base_url:
        return None
    try:
        import httpx
        import prometheus_client.parser  # noqa: F401  (vLLM installs it; a plain client host may not have it)
    except ImportError:
        return None
    try:
        response = httpx.get(metrics_url(base_url), timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        counters = parse_counters(response.text)
    except ValueError:  # not Prometheus text
        return None
    return counters if QUERIES in counters and HITS in counters else None


def prefix_cache_hit_rate(before: dict | None, after: dict | None) -> dict:
    """{"prefix_cache_hit_rate": the share of the level's queried prompt tokens the cache served}, warm-up requests
    included; {} where either reading is missing or no token was queried."""
    if not before or not after:
        return {}
    queries = after[QUERIES] - before[QUERIES]
    if queries <= 0:
        return {}
    return {"prefix_cache_hit_rate": (after[HITS] - before[HITS]) / queries}
