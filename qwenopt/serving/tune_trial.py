"""One trial of `tune --launch`: one server start with one engine configuration, several load levels on it.

Levels: a closed-loop burst of many users gives the configuration's saturation throughput; then open-loop rates,
bisected: the first just above the highest rate any trial has held within the SLO so far, per GPU at this trial's
GPUs (the question a search asks: does this one beat it?), or at `first_fraction` of saturation in the first trial,
then halfway between the highest rate that met the SLO and the lowest that missed it, or `GROWTH` times higher
while none has missed yet. While none has met it, the next probe is `BELOW_HINT` of the last below a hint (the
trial is likely near the best so far) and half of it below the burst's figure.
The hint is a rate offered, not the req/s measured: a short level's req/s counts its drain (on the H200 a level
offered 45.1 req/s measured 40.6), so a hint of 1.05 x the best req/s offered less than the best had held, and a
configuration as good as the best could only tie or lose (results/h200/tune/v2).
The burst only places the first probe: a short burst's start-up wave can underestimate what a configuration
sustains (on the H100 an 8 s burst put two Marlin configurations at 30-31 req/s, and their levels up to 28-29 req/s
met a 2 s SLO with P99 <= 1.05 s). A strict SLO can sit far below saturation (at E2E 0.8 s the first probes at
75, 37 and 19% of it may all miss), so while no level has met the SLO the halving goes on for up to as many probes
again, and a first met level found that late earns one bisection above it: a trial with no met level has no
goodput, and a trial 0 with none leaves the search no baseline.
Trial 0, the engine's defaults, bisects BASELINE_PROBES further: a winner's gain is read against the defaults'
bracket (met one rate, missed a higher one), and on the H200 a 3-probe bracket of 34.3-42.9 req/s let an fp16
search read +29% where fresh starts measured +7% (results/h200/tune/v2/confirm_fp16).
The trial's goodput at the SLO is the highest measured req/s of a level whose requests met it (P99 figures within
the SLO, >= 99% completed, the client not the limit: as `matrix` counts a level). Every level is a load row with
the trial columns (schema.TRIAL_COLUMNS); a server that fails to start or runs out of memory is one row with its
reason, and the search goes on.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from ..errors import QwenoptError
from .metrics import tail_text
from .sweep import LoadRun, run_one

OOM_MARKS = ("out of memory", "outofmemoryerror", "no available memory for the cache blocks")
MAX_REASON = 300  # characters of an error kept in the row
HINT_MARGIN = 1.05  # the first probe: 5% above the highest rate held so far (does this configuration beat it?)
GROWTH = 1.5  # the next probe after a level met the SLO while no level has missed it yet
BELOW_HINT = 0.75  # the next probe after a miss, while none has met the SLO, in a trial that began at a hint
BASELINE_PROBES = 2  # trial 0 (the defaults) bisects this much further: every gain is read against its bracket


@dataclass(frozen=True)
class TrialPlan:
    """The load levels of one trial."""
    burst_users: int = 256  # closed-loop users of the saturation burst (vLLM's sweep burst, see sweep.py)
    probes: int = 3  # open-loop rates bisected below saturation
    first_fraction: float = 0.75  # the first probe's share of the saturation throughput
    level_s: float = 15.0  # seconds of arrivals per level
    level_requests: int = 300  # an open-loop level lasts until at least this many have arrived (0: level_s only)

    @property
    def load_s(self) -> float:
        """The load's seconds at the least (levels at low rates last longer: level_seconds)."""
        return (1 + self.probes) * self.level_s

    @property
    def baseline_load_s(self) -> float:
        """Trial 0's load seconds at the least: its BASELINE_PROBES levels more."""
        return self.load_s + (BASELINE_PROBES * self.level_s if self.probes else 0.0)

    def level_seconds(self, rate: float) -> float:
        """An open-loop level's arrival window: level_s, or long enough for level_requests arrivals at `rate`.
        Why: at 12-26 req/s an 8 s level holds 80-190 requests, so its P99 is its worst one or two; on the H200 such
        levels met E2E P99 0.8 s where 15 s levels at the same rates, which caught a cluster of arrivals the 8 s
        window ended before, missed it by 0.06-1.4 s (results/h200/tune)."""
        return max(self.level_s, self.level_requests / rate) if self.level_requests and rate > 0 else self.level_s


@dataclass
class TrialResult:
    trial: int
    search_step: str  # default, given (--try), random, tpe
    config: dict  # every knob's value (the sampler's parameters)
    status: str  # schema.TRIAL_STATUSES
    reason: str | None = None
    goodput_req_s: float = 0.0  # highest measured req/s of a level within the SLO; 0 when none met it
    rate_req_s: float = math.nan  # the load that level was offered: its rate (a burst: the rate its requests came at)
    missed_rate_req_s: float = math.nan  # the lowest rate offered that missed the SLO (nan: none did): the limit lies
    # between the two, a bracket the probes left open
    output_tok_s: float = math.nan  # at that level
    usd_per_1m_output: float = math.nan  # at that level, at --gpu-hour-usd
    latency_p99_s: float = math.nan  # at that level
    ttft_p99_ms: float = math.nan
    concurrency_mean: float = math.nan  # requests in flight at that level (Little's law)
    tail: str | None = None  # that level's slowest 1%: "TTFT / decode / stalls" seconds (metrics.tail_text)
    saturation_req_s: float = math.nan  # the burst's req/s
    startup_s: float = math.nan
    wall_s: float = math.nan  # start + load + stop: what a trial costs the budget
    command: str | None = None  # a `vllm serve ...` (`transformers serve ...`) line equivalent to the trial's server
    run_id: str | None = None
    gpus: int = 1  # the GPUs the server occupied (tensor x pipeline parallel size)

    @property
    def goodput_per_gpu(self) -> float:
        return self.per_gpu(self.goodput_req_s)

    def per_gpu(self, value: float | None) -> float:
        """A rate of this trial's whole layout per GPU it occupied (nan for none)."""
        return value / max(1, self.gpus or 1) if value is not None else math.nan

    @property
    def finished(self) -> bool:
        """Measured to its end: a trial cut by Ctrl-C keeps its number and counts for nothing else."""
        return self.status != "interrupted"

    def score(self, objective: str) -> float:
        """What the search maximises: req/s at the SLO per GPU, or output tokens per dollar (1 / cost, which already
        pays for every GPU: matrix.costs); 0 for no level. Per GPU, so that a layout on more GPUs wins only by doing
        more with each."""
        if self.status != "ok":
            return 0.0
        if objective == "cost":
            return 1.0 / self.usd_per_1m_output if self.usd_per_1m_output > 0 else 0.0
        return self.goodput_per_gpu

    def record(self, study: str) -> dict:
        return {"study": study, **asdict(self)}


def level_verdict(row: dict, slo: dict[str, float]) -> str | None:
    """None when the level's requests met the SLO (as matrix counts a sustained level), else why not."""
    from ..matrix import MIN_COMPLETED, UNUSABLE_STATUSES

    if row.get("status") in UNUSABLE_STATUSES or row.get("status") == "failed":
        return f"level {row.get('status')}: {row.get('error') or 'no request ok'}"
    sent, completed = row.get("sent") or 0, row.get("completed") or 0
    if not sent or completed < MIN_COMPLETED * sent:
        return f"{completed} of {sent} requests completed"
    limits = {"e2e": ("latency_p99_s", 1.0, "s"), "ttft": ("ttft_p99_ms", 1e3, "ms"), "tpot": ("tpot_p99_ms", 1e3, "ms")}
    for name, limit in slo.items():
        column, scale, unit = limits[name]
        value = row.get(column)
        if value is None or not math.isfinite(value) or value > limit * scale:
            return f"P99 {name} {value:.4g} {unit} > {limit * scale:g} {unit}"
    return None


def start_failure_status(message: str) -> str:
    return "oom" if any(mark in message.lower() for mark in OOM_MARKS) else "start-failed"


@dataclass
class TrialRunner:
    """Runs trials on the server `start(stack, config)` returns (with its rows' identity columns)."""
    run: LoadRun  # the load settings; target and context are set per trial
    start: Callable[[contextlib.ExitStack, dict], tuple[object, dict]]
    make_target: Callable[[object], object]  # the server -> a client Target
    plan: TrialPlan
    slo: dict[str, float]
    gpu_hour_usd: float
    study: str
    identity: Callable[[dict], dict]  # a config -> the columns of its row when no server came up (regime, ...)
    begin: Callable = None  # progress view: begin/finish of each level (LevelView)
    finish: Callable = None
    measure: Callable | None = None  # the GPU sampler's factory
    extra_context: dict | None = None  # columns every row gets (endpoint fingerprint etc.)
    hint_req_s: float | None = None  # the rate to beat (tune_online.probe_hint): the first probe asks for it
    knobs: object = None  # the engine's EngineKnobs (tune_space); None: vLLM's

    def __call__(self, number: int, step: str, config: dict) -> TrialResult:
        from .tune_space import VLLM

        knobs = self.knobs or VLLM
        began = time.perf_counter()
        result = TrialResult(number, step, dict(config), "missed-slo", run_id=self.run.run_id,
                             gpus=int(self.identity(config).get("gpus") or 1))
        columns = {"study": self.study, "trial": number, "search_step": step,
                   "trial_config": knobs.config_json(config),
                   "spec_acceptance_assumed": knobs.changed(config).get("spec_acceptance")}
        try:
            with contextlib.ExitStack() as stack:
                try:
                    server, context = self.start(stack, config)
                except QwenoptError as exc:
                    result.status, result.reason = start_failure_status(str(exc)), _short(str(exc))
                    self._failure_row(columns, config, result)
                    return result
                result.startup_s = getattr(server, "startup_s", math.nan)
                result.command = knobs.serve_line(list(getattr(server, "command", []) or []))
                self.run.target = self.make_target(server)
                self.run.context = {**context, **(self.extra_context or {}), "endpoint": server.base_url,
                                    "server": getattr(server, "dialect", "vllm"), "via_gateway": False}
                self.run.annotate = lambda row: {**columns, **_verdict_columns(level_verdict(row, self.slo))}
                try:
                    self._levels(result)
                except QwenoptError as exc:  # the server died or a load worker failed: a failed trial, go on
                    result.status, result.reason = "failed", _short(str(exc))
        finally:
            result.wall_s = time.perf_counter() - began
        return result

    def _level(self, number: int, mode: str, value) -> dict:
        run = self.run
        if mode == "open":
            run = replace(run, duration_s=self.plan.level_seconds(value))
        rows = run_one(run, number, mode, value, self.begin or _no_begin, self.finish or (lambda rows: None),
                       self.measure)
        return next(r for r in rows if r["class"] == "all")

    def _levels(self, result: TrialResult) -> None:
        best: dict | None = None
        burst = self._level(1, "closed", self.plan.burst_users)
        result.saturation_req_s = burst.get("req_s") or math.nan
        reasons = [level_verdict(burst, self.slo)]
        if reasons[-1] is None:
            best = burst
        saturation = result.saturation_req_s
        low, high = 0.0, math.inf  # the highest rate that met the SLO, the lowest that missed it
        rate = saturation * self.plan.first_fraction if math.isfinite(saturation) and saturation > 0 else None
        descent = 0.5  # below the burst's figure: a strict SLO can sit far below saturation
        if self.hint_req_s and self.hint_req_s > 0:  # just above the best so far, whatever the burst said
            rate, descent = self.hint_req_s * HINT_MARGIN, BELOW_HINT
        if best is None and rate:
            extra = BASELINE_PROBES if result.trial == 0 and self.plan.probes else 0
            probe, planned = 0, self.plan.probes + extra
            while probe < planned:
                rate = round(rate, 3)  # the rate the level is offered, and the bracket's ends, to the same digits
                row = self._level(2 + probe, "open", rate)
                reasons.append(level_verdict(row, self.slo))
                first_met = reasons[-1] is None and best is None
                if reasons[-1] is None:
                    if best is None or row["req_s"] > best["req_s"]:
                        best = row
                    low = rate
                else:
                    high = rate
                probe += 1
                if probe == planned < 2 * self.plan.probes + extra and (best is None or first_met):
                    planned += 1  # nothing met yet: halve again; the first met this late: one bisection above it
                if not math.isfinite(high):
                    rate *= GROWTH
                else:
                    rate = (low + high) / 2 if low > 0 else high * descent
        if best is None:
            result.status = "missed-slo"
            result.reason = "no level met the SLO: " + "; ".join(r for r in reasons if r)
            return
        from ..matrix import costs

        gpus = int(best.get("gpus") or result.gpus or 1)
        price = costs(best, gpus, self.gpu_hour_usd)
        result.status, result.reason, result.gpus = "ok", None, gpus
        result.goodput_req_s = float(best["req_s"])
        result.rate_req_s = offered_rate(best)
        result.missed_rate_req_s = high if math.isfinite(high) else math.nan
        result.output_tok_s = float(best["output_tok_s"])
        result.usd_per_1m_output = price["usd_per_1m_output_tokens"]
        result.latency_p99_s = float(best["latency_p99_s"])
        result.ttft_p99_ms = float(best["ttft_p99_ms"])
        result.concurrency_mean = float(best.get("concurrency_mean") or math.nan)
        result.tail = tail_text(best) or None

    def _failure_row(self, columns: dict, config: dict, result: TrialResult) -> None:
        """A trial whose server never came up: one row (class all, level 0) that says why."""
        from ..results import append_csv
        from ..schema import TUNE_LOAD_COLUMNS
        from .metrics import level_rows

        context = {**self.identity(config), **(self.extra_context or {}), "run_id": self.run.run_id, "level": 0,
                   "workload": self.run.workload.describe(), "slo": self.run.slo, "seed": self.run.seed}
        row = level_rows([], context)[-1]
        row.update(columns, status="error", error=result.reason, trial_status=result.status,
                   trial_reason=result.reason)
        lengths = {self.run.workload.sample(i)[1:3] for i in range(200)}
        if len(lengths) == 1:  # fixed lengths: the row sits in the same matrix table as the trials that ran
            row["input_len"], row["output_len"] = lengths.pop()
        append_csv(self.run.out, row, TUNE_LOAD_COLUMNS)


def offered_rate(row: dict) -> float:
    """The load a level was offered: its rate, or for a closed-loop burst the rate its requests arrived at (its req/s
    in rows written before arrived_req_s existed)."""
    for column in ("rate", "arrived_req_s", "req_s"):
        value = row.get(column)
        if value is not None and isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            return float(value)
    return math.nan


def bracket(levels) -> tuple[dict | None, float, float]:
    """One trial's load rows (class all) -> its best level within the SLO (None: none), the rate that level was
    offered and the lowest rate above it that missed the SLO (nan: none): the limit lies between the two."""
    import pandas as pd

    met = levels[levels["trial_status"] == "ok"]
    best = met.loc[pd.to_numeric(met["req_s"], errors="coerce").idxmax()].to_dict() if not met.empty else None
    offered = offered_rate(best) if best is not None else math.nan
    missed = pd.to_numeric(levels.loc[levels["trial_status"] == "missed-slo", "rate"], errors="coerce").dropna()
    above = missed[missed > offered] if best is not None else missed
    return best, offered, (float(above.min()) if not above.empty else math.nan)


def fill_brackets(results: list[TrialResult], rows) -> None:
    """Give trials recorded before TrialResult kept `rate_req_s` and `missed_rate_req_s` the two from their load
    rows (the search's CSV, class all), so the outcome can bound a winner's gain for them too."""
    for result in results:
        if result.status == "ok" and not math.isfinite(result.rate_req_s):
            mine = rows[rows["trial"] == result.trial]
            if not mine.empty:
                _, result.rate_req_s, result.missed_rate_req_s = bracket(mine)


def cards(rows, keys: list[str]) -> dict:
    """Rows' key (a trial, or a configuration and round) -> the GPUs (gpu_uuid) its levels ran on, where the rows say:
    two machines of one kind can differ by more than a tuned gain (results/h200/tune/v2/aa_fp16), so a comparison
    across them is one of cards too. Rows from before the column give nothing."""
    if "gpu_uuid" not in rows or any(k not in rows for k in keys):
        return {}
    known = rows.dropna(subset=["gpu_uuid", *keys])
    return {key: frozenset(group["gpu_uuid"]) for key, group in known.groupby(keys if len(keys) > 1 else keys[0])}


def _verdict_columns(reason: str | None) -> dict:
    return {"trial_status": "ok" if reason is None else "missed-slo", "trial_reason": reason}


def _no_begin(number, mode, value, expected):
    return lambda record: None


def _short(message: str) -> str:
    """An error for a CSV cell: its last informative lines (a server log tail ends with the cause), one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    marked = [line for line in lines if any(mark in line.lower() for mark in OOM_MARKS + ("error",))]
    text = " | ".join([lines[0]] + marked[-2:]) if lines else message
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."
