"""The engine's own 10-second figures from `vllm serve` logs: computed prompt tokens/s, generated tokens/s, running
requests and its prefix-cache hit rate (a sliding window), as a Markdown table per log.

    python3 benchmarks/vllm_log_throughput.py results/h200/tune/confirm-s8/low/serve_defaults_0.log ...

Why: "Avg prompt throughput" counts only the prompt tokens the engine computed, not those its prefix cache served.
Offered 6.5 req/s of 512-token prompts it should read about 3,328 tokens/s; on the H200 it read 2,300-3,800 in a
confirm run's first level and 107-192 in the four later ones (8-12.5 req/s), which had resent its prompts.
"""
from __future__ import annotations

import re
import sys

LINE = re.compile(r"INFO (\d\d-\d\d \d\d:\d\d:\d\d) .*Avg prompt throughput: ([\d.]+) tokens/s, "
                  r"Avg generation throughput: ([\d.]+) tokens/s, Running: (\d+) reqs.*?"
                  r"(?:Prefix cache hit rate: ([\d.]+)%)?$")


def rows(text: str) -> list[tuple[str, float, float, int, str]]:
    """(time, computed prompt tok/s, generated tok/s, running, hit rate % or "-") per logged interval."""
    found = []
    for line in text.splitlines():
        match = LINE.search(line)
        if match:
            when, prompt, gen, running, hit = match.groups()
            found.append((when, float(prompt), float(gen), int(running), hit or "-"))
    return found


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: vllm_log_throughput.py SERVE.log ...")
    for path in sys.argv[1:]:
        print(f"### {path}\n\n| time | computed prompt tok/s | generated tok/s | running | prefix cache hit % |\n"
              "|---|---|---|---|---|")
        for when, prompt, gen, running, hit in rows(open(path, errors="replace").read()):
            print(f"| {when} | {prompt:,.1f} | {gen:,.1f} | {running} | {hit} |")
        print()


if __name__ == "__main__":
    main()
