"""The search of `tune --launch`: vLLM's defaults first, then Optuna's TPE over the engine knobs.

An engine start costs minutes (99-151 s measured on the H100), so each trial is one start measured at several
loads (serving/tune_trial.py), and the configurations are chosen by a model of the trials so far (TPE: a few
random configurations, then those the model expects best) rather than a grid. Trial 0 is always vLLM's defaults,
measured in the same search, to compare the winner against. A trial that fails counts as 0 (the sampler learns
to avoid its region) and the search goes on.

The budget (`budget_s`) counts from the search's start, engine starts included: a trial is started only when the
mean wall time of the finished trials (or the first trial's estimate) still fits. Every finished trial is one
JSON line in OUT.trials.jsonl; `--resume` feeds them back to a new study (optuna's add_trial), so a search goes
on across separate runs (a GPU host that allows ten minutes per command).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import QwenoptError
from .tune_space import VLLM, EngineKnobs
from .tune_trial import TrialResult

MAX_REPEATS = 50  # suggestions of already-measured configurations before the space counts as exhausted


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise QwenoptError("tune --launch needs optuna: pip install 'qwenopt[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class SearchSettings:
    study: str  # study_key(...) of the settings
    objective: str = "goodput"  # goodput (req/s at the SLO) or cost ($ per 1M output tokens at it)
    trials: int = 12  # trials in the whole study, resumed ones included
    budget_s: float | None = None  # wall seconds this run may spend
    first_estimate_s: float = 300.0  # a trial's expected cost before any has finished
    seed: int = 0
    startup: int = 3  # trials (trial 0 included) before TPE models the rest; the first ones are random
    given: tuple[dict, ...] = ()  # --try: configurations measured right after trial 0, before the sampler's own


def study_key(**settings) -> str:
    """A short hash of what makes trials comparable: regime, workload, SLO, objective, space, load plan."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def trials_path(out: Path) -> Path:
    return Path(out).with_suffix(".trials.jsonl")


def read_trials(out: Path, study: str) -> tuple[list[TrialResult], int]:
    """The finished trials of this study in OUT.trials.jsonl, and how many other records were skipped."""
    from ..results import read_jsonl

    mine, others = [], 0
    for record in read_jsonl(trials_path(out)):
        if record.get("study") != study:
            others += 1
            continue
        known = TrialResult.__dataclass_fields__
        mine.append(TrialResult(**{k: (math.nan if v is None and isinstance(known[k].default, float) else v)
                                   for k, v in record.items() if k in known}))
    return mine, others


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def search(space: dict[str, tuple], settings: SearchSettings, measure: Callable[[int, str, dict], TrialResult],
           finished: list[TrialResult] | None = None, on_trial: Callable[[TrialResult], None] | None = None,
           say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
           started: float | None = None, knobs: EngineKnobs = VLLM) -> list[TrialResult]:
    """Run trials until `settings.trials` exist (resumed ones count), the budget would overrun or the space is
    exhausted; returns every trial, resumed ones first. `measure(number, step, config)` runs one trial; `started`
    is when the run began on `clock` (the budget counts from it; default now); `knobs` names the engine's defaults.

    A trial cut short by Ctrl-C is passed to `on_trial` as status "interrupted" before the interrupt goes on: it
    keeps its number (its rows are in the file) but counts for nothing else."""
    optuna = require_optuna()
    from optuna.distributions import CategoricalDistribution

    base = knobs.defaults(space)  # a resumed trial ran every knob it does not name (added since) at its default
    results = [r if set(base) <= set(r.config) else replace(r, config={**base, **r.config}) for r in finished or []]
    distributions = {name: CategoricalDistribution(list(choices)) for name, choices in space.items()}
    sampler = optuna.samplers.TPESampler(seed=settings.seed + len(results), n_startup_trials=settings.startup,
                                         multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen: dict[str, TrialResult] = {}

    def key(config: dict) -> str:
        return _key(knobs.runs_as(config))

    def learn(result: TrialResult) -> None:
        seen[key(result.config)] = result
        if set(result.config) == set(space) and all(v in space[k] for k, v in result.config.items()):
            study.add_trial(optuna.trial.create_trial(params=result.config, distributions=distributions,
                                                      value=result.score(settings.objective)))

    for result in results:
        if result.finished:
            learn(result)
    start = clock() if started is None else started
    while sum(r.finished for r in results) < settings.trials:
        walls = [r.wall_s for r in results
                 if r.finished and r.wall_s is not None and math.isfinite(r.wall_s)]
        expected = sum(walls) / len(walls) if walls else settings.first_estimate_s
        spent = clock() - start
        if settings.budget_s is not None and spent + expected > settings.budget_s:
            say(f"budget: the next trial is expected to take {expected:.0f} s and {settings.budget_s - spent:.0f} s "
                f"are left; stopping (--resume goes on)")
            break
        number = max((r.trial for r in results), default=-1) + 1
        todo = [c for c in settings.given if key(c) not in seen]
        if not any(r.trial == 0 and r.finished for r in results):
            number, step, config, asked = 0, "default", knobs.defaults(space), None
        elif todo:  # a user's hunch is measured like any trial, and the sampler learns from it (learn below)
            step, config, asked = "given", todo[0], None
        else:
            complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
            asked = _ask_new(study, distributions, seen, settings.objective, key)
            if asked is None:
                say("every configuration the sampler proposes has been measured; stopping")
                break
            step = "random" if complete < settings.startup else "tpe"  # as TPE's n_startup_trials counts
            config = asked.params
        say(f"trial {number} ({step}): {knobs.config_json(config)}")
        began = clock()
        try:
            result = measure(number, step, config)
        except KeyboardInterrupt:
            if on_trial:
                on_trial(TrialResult(number, step, config, "interrupted", "Ctrl-C", wall_s=clock() - began))
            raise
        results.append(result)
        if asked is not None:
            study.tell(asked, result.score(settings.objective))
            seen[key(result.config)] = result
        else:
            learn(result)
        if on_trial:
            on_trial(result)
    return results


def _ask_new(study, distributions, seen: dict, objective: str, key: Callable[[dict], str] = _key):
    """The sampler's next configuration not measured yet (repeats are told their known score, costing nothing)."""
    for _ in range(MAX_REPEATS):
        trial = study.ask(distributions)
        known = seen.get(key(trial.params))
        if known is None:
            return trial
        study.tell(trial, known.score(objective))
    return None


def probe_hint(results: list[TrialResult], gpus: int) -> float | None:
    """The rate a trial on `gpus` GPUs must beat: the highest rate per GPU any trial has held within the SLO, times
    its GPUs (None before any trial met the SLO). A trial recorded before the rate was (no `rate_req_s`) counts
    with its goodput."""
    def held(r: TrialResult) -> float:
        return r.per_gpu(r.rate_req_s if r.rate_req_s is not None and math.isfinite(r.rate_req_s) else r.goodput_req_s)

    best = max((held(r) for r in results if r.status == "ok"), default=None)
    return best * gpus if best else None


def pareto_front(results: list[TrialResult], objective: str = "goodput") -> list[TrialResult]:
    """The trials no other beats on both the objective (higher score) and P99 E2E latency (lower), best first."""
    ok = [r for r in results if r.status == "ok"]
    front = [r for r in ok if not any(
        o.score(objective) >= r.score(objective) and o.latency_p99_s <= r.latency_p99_s
        and (o.score(objective) > r.score(objective) or o.latency_p99_s < r.latency_p99_s) for o in ok)]
    return sorted(front, key=lambda r: -r.score(objective))


def winner(results: list[TrialResult], objective: str = "goodput") -> TrialResult | None:
    ok = [r for r in results if r.status == "ok"]
    return max(ok, key=lambda r: (r.score(objective), -r.latency_p99_s)) if ok else None
