"""Sweep grids and prompts: exact, seeded, and checked before any model is loaded."""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from .errors import QwenoptError


@dataclass(frozen=True)
class Cell:
    batch_size: int
    input_len: int
    output_len: int


def parse_sizes(text: str | int | list, option: str) -> list[int]:
    """'1,8,32' (or an int, or a list from a config file) -> [1, 8, 32]; positive integers only."""
    items = text if isinstance(text, list) else str(text).split(",")
    sizes = []
    for item in items:
        item = str(item).strip()
        try:
            value = int(item)
        except ValueError:
            raise QwenoptError(f"{option} must be comma-separated positive integers, got {text!r}") from None
        if value <= 0:
            raise QwenoptError(f"{option} sizes must be positive, got {value}")
        sizes.append(value)
    if not sizes:
        raise QwenoptError(f"{option} is empty")
    return sizes


def make_grid(batches: list[int], input_lens: list[int], output_lens: list[int], max_context: int) -> list[Cell]:
    """Every batch x input x output cell, refusing cells longer than the model's context."""
    cells = [Cell(b, i, o) for b, i, o in itertools.product(batches, input_lens, output_lens)]
    for cell in cells:
        if cell.input_len + cell.output_len > max_context:
            raise QwenoptError(
                f"input {cell.input_len} + output {cell.output_len} tokens exceed the model's context of {max_context}"
            )
    return cells


def make_prompts(batch_size: int, input_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Random token ids, exactly input_len each; the seed and the cell fix them, so reruns send the same prompts."""
    rng = random.Random(f"{seed}-{batch_size}-{input_len}")
    # Keep clear of the top of the vocabulary, where Qwen keeps its special tokens.
    high = max(2, min(vocab_size, 151643) - 1)
    return [[rng.randrange(1, high) for _ in range(input_len)] for _ in range(batch_size)]
