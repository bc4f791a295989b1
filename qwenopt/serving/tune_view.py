"""The outcome of `tune --launch` as plain text lines of at most 80 characters (the serve line excepted)."""
from __future__ import annotations

import json
import math
import textwrap

from .tune_online import pareto_front, winner
from .tune_space import VLLM, EngineKnobs
from .tune_trial import TrialResult, cards

WIDTH = 80


def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "-"


def _config(result: TrialResult, knobs: EngineKnobs) -> str:
    changed = knobs.changed(result.config)
    return json.dumps(changed, separators=(",", ":")) if changed else knobs.label


def _figures(result: TrialResult) -> str:
    gpus = f" on {result.gpus} GPUs ({_num(result.goodput_per_gpu, 2)} per GPU)" if result.gpus > 1 else ""
    held = result.rate_req_s
    offered = f" (offered {_num(held, 2)})" if held is not None and math.isfinite(held) else ""
    return (f"{_num(result.goodput_req_s, 2)} req/s{offered}{gpus} at P99 {_num(result.latency_p99_s, 3)} s, "
            f"${_num(result.usd_per_1m_output, 4)}/1M output tokens")


def _tail(result: TrialResult) -> list[str]:
    """Where that level's slowest requests spent their E2E (none for trials recorded before it was kept)."""
    return [f"  slowest 1% at that level, TTFT / decode / stalls: {result.tail} s"] if result.tail else []


def gain_bound(best: TrialResult, default: TrialResult) -> tuple[bool, str] | None:
    """What the levels prove about a winner's gain over the defaults, from the two brackets (the rate each met, the
    lowest rate above it each missed): (False, why) where the winner's level lies inside the defaults' bracket, so
    nothing; (True, the floor) where it held a rate the defaults missed; None where the defaults missed no rate
    above their best."""
    held, missed = best.per_gpu(best.rate_req_s), default.per_gpu(default.missed_rate_req_s)
    if not (math.isfinite(held) and math.isfinite(missed)):
        return None
    if held < missed:
        return False, (f"the defaults met {_num(default.rate_req_s, 2)} req/s offered and missed "
                       f"{_num(default.missed_rate_req_s, 2)}; the winner's {_num(best.rate_req_s, 2)} lies between, "
                       f"so the search has not told them apart")
    return True, (f"the winner met {_num(best.rate_req_s, 2)} req/s offered, a rate the defaults missed (at "
                  f"{_num(default.missed_rate_req_s, 2)}): at least {held / missed - 1:+.1%} in rate offered")


def _caveat(best: TrialResult, default: TrialResult) -> str:
    """Why a gain over the defaults needs re-measuring, and what the search's own levels bound it to (gain_bound):
    on the H200 a +29% of the fp16 search was one 3 req/s step, +7%, on fresh starts
    (results/h200/tune/v2/confirm_fp16)."""
    bound = gain_bound(best, default)
    if bound is None:
        return ("  each figure is one short level of one start: re-measure both on fresh starts before trusting the "
                "gain (qwenopt confirm, below)")
    proven, text = bound
    if not proven:
        return f"  {text}: re-measure both on fresh starts (qwenopt confirm, below)"
    return f"  {text}, on one short level of one start each; size the gain on fresh starts (qwenopt confirm, below)"


def card_note(rows, best_trial: int) -> str | None:
    """A line where the winner and the defaults ran on different cards (the rows' gpu_uuid): a search resumed in
    another device call may land on another machine, and on the H200 two machines of one kind differed by more than
    a tuned gain (results/h200/tune/v2/aa_fp16). None where they shared one, or the rows do not say."""
    on = cards(rows, ["trial"])
    if best_trial not in on or 0 not in on or on[best_trial] == on[0]:
        return None
    return (f"  trial {best_trial} and the defaults ran on different cards ({len(frozenset().union(*on.values()))} in "
            f"this search, gpu_uuid): the gain includes the cards' difference; qwenopt confirm measures both on one")


def trial_table(results: list[TrialResult], knobs: EngineKnobs = VLLM) -> list[str]:
    head = f"{'trial':>5} {'step':<7} {'status':<12} {'req/s':>7} {'P99 s':>7} {'$/1M':>7}  config"
    lines = [head]
    for r in sorted(results, key=lambda r: r.trial):
        text = (f"{r.trial:>5} {r.search_step:<7} {r.status:<12} {_num(r.goodput_req_s, 2):>7} "
                f"{_num(r.latency_p99_s, 3):>7} {_num(r.usd_per_1m_output, 4):>7}  ")
        room = WIDTH - len(text)
        config = _config(r, knobs)
        lines.append(text + (config if len(config) <= room else config[: room - 3] + "..."))
    return lines


def outcome_lines(results: list[TrialResult], objective: str, grid: int, resumed: int,
                  knobs: EngineKnobs = VLLM) -> list[str]:
    """Trials, the winner next to the engine's defaults, the Pareto front, the search's cost and the winner's serve
    line."""
    lines = trial_table(results, knobs)
    best = winner(results, objective)
    default = next((r for r in results if r.trial == 0 and r.finished), None)
    if best is None:
        lines.append("no trial met the SLO at any load:")
        lines += [f"  trial {r.trial}: {r.reason}"[: 2 * WIDTH] for r in results if r.reason]
    else:
        lines.append(f"winner: trial {best.trial}, {_figures(best)}")
        lines.append(f"  config: {_config(best, knobs)}")
        lines += _tail(best)
        if default is not None and default.status == "ok" and default.goodput_req_s > 0:
            gain = best.goodput_per_gpu / default.goodput_per_gpu - 1
            per = " per GPU" if best.gpus != default.gpus else ""
            lines.append(f"defaults (trial 0): {_figures(default)}; winner {gain:+.1%} goodput{per}")
            lines += _tail(default) if best.trial != 0 else []
            if best.trial != 0:  # on the H200 a +134% of one search did not survive a recheck (results/h200/tune)
                lines.append(_caveat(best, default))
        elif default is not None:
            lines.append(f"defaults (trial 0): {default.status} ({default.reason or 'no level met the SLO'})"[:WIDTH])
        axis = "$/1M output tokens" if objective == "cost" else "goodput"
        front = pareto_front(results, objective)
        lines.append(f"Pareto front ({axis} vs P99 E2E), best first:")
        for r in front:
            lines.append(f"  trial {r.trial}: {_figures(r)}")
        spec = knobs.changed(best.config)
        if "spec_acceptance" in spec:
            from ..engines.vllm_spec import acceptance_rates, mean_acceptance_length

            length = mean_acceptance_length(acceptance_rates(spec["spec_acceptance"], spec["num_speculative_tokens"]))
            lines.append(f"  (its speculative acceptance is ASSUMED, not measured: {spec['spec_acceptance']:g} per "
                         f"token, a mean acceptance length of {length:.2f} with {spec['num_speculative_tokens']} "
                         f"draft tokens, forced by vLLM's synthetic sampler)")
    walls = [r.wall_s for r in results if r.wall_s is not None and math.isfinite(r.wall_s)]
    cut = sum(not r.finished for r in results)
    lines.append(f"search: {len(results) - cut} trials ({resumed} resumed" + (f", {cut} more interrupted" if cut else "")
                 + f"), {sum(walls) / 60:.1f} min of trial wall time (server starts included); a full grid of this "
                 f"space is {grid:,} configurations")
    lines = [part for line in lines for part in (textwrap.wrap(line, WIDTH, subsequent_indent="    ")
                                                 if len(line) > WIDTH else [line])]
    if best is not None and best.command:  # one line to copy, however long
        lines += ["serve the winner:", "  " + best.command]
        if math.isfinite(best.concurrency_mean):
            lines += [f"admission in front of it (the {best.concurrency_mean:,.1f} requests in flight that met the SLO):",
                      f"  qwenopt gateway --upstream http://127.0.0.1:8000/v1 --max-in-flight "
                      f"{max(1, math.floor(best.concurrency_mean))}"]
    return lines
