"""How many trials the online tuner's search needs, against a grid and random search, on the synthetic goodput surface
of tests/test_tune_online.py (5 knobs, 360 configurations, one optimum, 10 configurations within 90% of it).

    python3 benchmarks/tune_synthetic.py > results/cpu/tune_synthetic.txt

Counts include trial 0 (vLLM's defaults). No GPU and no timing: the search is run on a simulated clock.
"""
from __future__ import annotations

import itertools
import random
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.simplefilter("ignore")

from qwenopt.serving.tune_online import SearchSettings, search  # noqa: E402
from tests.test_tune_online import BEST, SPACE, Clock, goodput_of, quiet, synthetic  # noqa: E402

SEEDS, RANDOM_SEEDS, TRIALS = 20, 200, 60


def main() -> None:
    best = goodput_of(BEST)
    configs = [dict(zip(SPACE, values)) for values in itertools.product(*SPACE.values())]
    near = sum(goodput_of(c) >= 0.9 * best for c in configs)
    print(f"space: {len(configs)} configurations, optimum {best:g}, {near} within 90% of it")
    for startup in (2, 3, 5):
        exact, close = [], []
        for seed in range(SEEDS):
            results = search(SPACE, SearchSettings("s", trials=TRIALS, seed=seed, startup=startup),
                             synthetic(Clock()), say=quiet, clock=Clock())
            exact.append(next((r.trial + 1 for r in results if r.config == BEST), TRIALS + 1))
            close.append(next((r.trial + 1 for r in results if r.goodput_req_s >= 0.9 * best), TRIALS + 1))
        print(f"TPE (startup {startup}), {SEEDS} seeds: trials to the optimum median {statistics.median(exact):g} "
              f"(max {max(exact)}); to within 90% median {statistics.median(close):g} (max {max(close)})")
    exact, close = [], []
    for seed in range(RANDOM_SEEDS):
        order = configs[:]
        random.Random(seed).shuffle(order)
        values = [goodput_of(c) for c in order]
        exact.append(values.index(best) + 1)
        close.append(next(i + 1 for i, v in enumerate(values) if v >= 0.9 * best))
    print(f"random order, {RANDOM_SEEDS} seeds: trials to the optimum median {statistics.median(exact):g}; "
          f"to within 90% median {statistics.median(close):g}")
    print(f"grid: {len(configs)} trials to be sure of the optimum")


if __name__ == "__main__":
    main()
