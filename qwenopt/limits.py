"""Caps on what one run may ask, checked before anything is allocated.

A typo such as `--batch 100000000` would otherwise build prompts until the machine runs out of
memory. Each cap is generous for Qwen2.5-7B serving and can be lifted with its environment variable.
"""
from __future__ import annotations

import os

from .errors import QwenoptError

# name -> (environment variable, default)
LIMITS = {
    "batch": ("QWENOPT_MAX_BATCH", 65_536),  # requests in one static batch / one tune probe
    "length": ("QWENOPT_MAX_LENGTH", 1_048_576),  # tokens in one prompt or one output
    "cell_tokens": ("QWENOPT_MAX_CELL_TOKENS", 16_777_216),  # batch x (input + output) tokens of one cell
    "requests": ("QWENOPT_MAX_REQUESTS", 1_000_000),  # requests one load level may plan, warm-up included
}


def limit(name: str) -> int:
    variable, default = LIMITS[name]
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise QwenoptError(f"{variable} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise QwenoptError(f"{variable} must be a positive integer, got {text!r}")
    return value


def check_at_most(value: int, name: str, what: str) -> None:
    """Refuse `value` over the named cap, saying the cap and how to lift it."""
    cap = limit(name)
    if value > cap:
        variable = LIMITS[name][0]
        raise QwenoptError(f"{what} {value:,} is over the limit of {cap:,}; set {variable} to lift it")


def check_sweep(batches: list[int], input_lens: list[int], output_lens: list[int]) -> None:
    """Every size of a sweep, and its largest cell, within the caps."""
    for batch in batches:
        check_at_most(batch, "batch", "--batch")
    for length in input_lens:
        check_at_most(length, "length", "--input-len")
    for length in output_lens:
        check_at_most(length, "length", "--output-len")
    check_at_most(max(batches) * (max(input_lens) + max(output_lens)), "cell_tokens",
                  "the largest cell's batch x (input + output) tokens")
