"""Sweep grids and prompts: exact, seeded, and checked before any model is loaded.

Offline (`bench`): a grid of cells and one batch of prompts per cell. Online (`load`): a `Workload` that gives
each request its class, lengths and prompt from (seed, index) alone, so nothing is drawn ahead.
"""
from __future__ import annotations

import itertools
import json
import math
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
    high = _prompt_id_bound(vocab_size)
    return [[rng.randrange(1, high) for _ in range(input_len)] for _ in range(batch_size)]


# --- Online load: request lengths, classes and prompts, each drawn from (seed, request index) alone ---

# `--workload chat`: lognormal lengths, like ShareGPT's long tail. The means are the ShareGPT averages the vLLM
# paper reports (Kwon et al., SOSP 2023: 161.31 input and 337.99 output tokens); the shape sigma is chosen, not
# fitted: with sigma 1 the median is about 0.61 x the mean and 1 request in 40 is over 4.3 x the mean.
CHAT_INPUT_MEAN = 161
CHAT_OUTPUT_MEAN = 338
CHAT_SIGMA = 1.0
CHAT_MIN_LEN = 4  # vLLM's ShareGPT sampler drops conversations shorter than 4 tokens; we clip up to 4 instead
RESERVED_CLASS = "all"  # the name of a level's total row, so no --mix class may take it


def _prompt_id_bound(vocab_size: int) -> int:
    """Exclusive upper bound of prompt token ids: clear of the top of the vocabulary, where Qwen keeps its specials."""
    return max(2, min(vocab_size, 151643) - 1)


@dataclass(frozen=True)
class Lengths:
    """A token length: fixed (low == high) or uniform over the integers low..high, both included."""
    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        return self.low if self.low == self.high else rng.randint(self.low, self.high)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}:{self.high}"


def parse_length(text: str | int, option: str, sep: str = ":") -> Lengths:
    """'512' -> fixed 512; '128:2048' -> uniform 128..2048 (sep is '-' inside a --mix class)."""
    text = str(text).strip()
    parts = text.split(sep)
    try:
        if len(parts) > 2:
            raise ValueError
        low, high = int(parts[0]), int(parts[-1])
    except ValueError:
        raise QwenoptError(f"{option} must be a token count (512) or a range (128{sep}2048), got {text!r}") from None
    if low < 1:
        raise QwenoptError(f"{option} lengths must be at least 1 token, got {text!r}")
    if low > high:
        raise QwenoptError(f"{option} range {text!r} runs backwards: give LOW{sep}HIGH")
    return Lengths(low, high)


@dataclass(frozen=True)
class FixedLengths:
    """Input and output lengths, each fixed or uniform (`--input-len`, `--output-len`, one --mix class)."""
    input_len: Lengths
    output_len: Lengths

    def draw(self, rng: random.Random, index: int) -> tuple[int, int]:
        return self.input_len.draw(rng), self.output_len.draw(rng)

    def __str__(self) -> str:
        return f"in {self.input_len} out {self.output_len}"


@dataclass(frozen=True)
class ChatLengths:
    """Lognormal input and output lengths of the given means, clipped so that every request fits the context."""
    max_context: int
    input_mean: float = CHAT_INPUT_MEAN
    output_mean: float = CHAT_OUTPUT_MEAN
    sigma: float = CHAT_SIGMA

    def draw(self, rng: random.Random, index: int) -> tuple[int, int]:
        def lognormal(mean: float) -> int:  # mu chosen so that the distribution's mean is `mean`
            return round(rng.lognormvariate(math.log(mean) - self.sigma ** 2 / 2, self.sigma))

        input_len = min(max(CHAT_MIN_LEN, lognormal(self.input_mean)), self.max_context - CHAT_MIN_LEN)
        output_len = min(max(CHAT_MIN_LEN, lognormal(self.output_mean)), self.max_context - input_len)
        return input_len, output_len

    def __str__(self) -> str:
        return (f"chat lognormal in mean {self.input_mean:g} out mean {self.output_mean:g} sigma {self.sigma:g} "
                f"clip {CHAT_MIN_LEN}..{self.max_context}")


@dataclass(frozen=True)
class FileEntry:
    input_len: int  # 0 for a real prompt without an input_len hint: the server's usage tells
    output_len: int
    prompt: str | None = None


@dataclass(frozen=True)
class FileLengths:
    """The lines of a JSONL file, cycled through in order (or in one seeded shuffled order)."""
    path: str
    entries: tuple[FileEntry, ...]
    order: tuple[int, ...]
    shuffled: bool

    def entry(self, index: int) -> FileEntry:
        return self.entries[self.order[index % len(self.order)]]

    def draw(self, rng: random.Random, index: int) -> tuple[int, int]:
        entry = self.entry(index)
        return entry.input_len, entry.output_len

    def __str__(self) -> str:
        return f"file {self.path} ({len(self.entries)} lines, {'shuffled' if self.shuffled else 'in order'})"


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QwenoptError(f"{what} must be a positive integer, got {value!r}")
    return value


def load_jsonl(path: str, max_context: int) -> list[FileEntry]:
    """Lines of {"input_len": N, "output_len": M} or {"prompt": "...", "output_len": M}; errors name the line."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QwenoptError(f"--workload {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--workload {path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QwenoptError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise QwenoptError(f"{where}: expected an object with output_len and input_len or prompt")
        prompt = item.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or not prompt):
            raise QwenoptError(f"{where}: prompt must be a non-empty string")
        if "output_len" not in item:
            raise QwenoptError(f"{where}: output_len is missing")
        output_len = _positive_int(item["output_len"], f"{where}: output_len")
        if prompt is None and "input_len" not in item:
            raise QwenoptError(f"{where}: give input_len (token count) or prompt (text)")
        input_len = _positive_int(item["input_len"], f"{where}: input_len") if "input_len" in item else 0
        if input_len + output_len > max_context:
            raise QwenoptError(f"{where}: input {input_len} + output {output_len} tokens exceed the model's context "
                               f"of {max_context}")
        entries.append(FileEntry(input_len, output_len, prompt))
    if not entries:
        raise QwenoptError(f"--workload {path}: no request lines")
    return entries


@dataclass(frozen=True)
class RequestClass:
    name: str
    share: float  # of all requests, drawn per request
    lengths: FixedLengths | ChatLengths | FileLengths


def parse_mix(text: str) -> list[tuple[str, float, FixedLengths]]:
    """'short=0.8:128:64,long=0.2:4096:512' (name=share:input:output; lengths may be ranges like 64-256)."""
    option = "--mix"
    classes = []
    for item in str(text).split(","):
        name, eq, spec = item.strip().partition("=")
        parts = spec.split(":")
        if not eq or len(parts) != 3 or not name.strip():
            raise QwenoptError(f"{option} classes are name=share:input:output (e.g. short=0.8:128:64), got {item!r}")
        name = name.strip()
        if not all(c.isalnum() or c in "_-" for c in name) or name == RESERVED_CLASS:
            raise QwenoptError(f"{option} class names are letters, digits, _ or - and not {RESERVED_CLASS!r}, got {name!r}")
        if name in (c[0] for c in classes):
            raise QwenoptError(f"{option} names class {name!r} twice")
        try:
            share = float(parts[0])
        except ValueError:
            raise QwenoptError(f"{option} class {name}: share must be a number, got {parts[0]!r}") from None
        if not 0 < share <= 1:
            raise QwenoptError(f"{option} class {name}: share must be in (0, 1], got {parts[0]!r}")
        lengths = FixedLengths(parse_length(parts[1], f"{option} class {name} input", sep="-"),
                               parse_length(parts[2], f"{option} class {name} output", sep="-"))
        classes.append((name, share, lengths))
    total = sum(c[1] for c in classes)
    if abs(total - 1) > 1e-6:
        raise QwenoptError(f"{option} shares must sum to 1, got {total:g}")
    return classes


class Workload:
    """What each request of a level asks for: its class, lengths and prompt, from (seed, index) alone.

    Nothing is drawn ahead: `sample(i)` and `prompt(i, n)` give the same answer for the same seed and index in any
    order and any process, so a schedule can stream millions of requests and workers can build prompts lazily.
    """

    def __init__(self, classes: list[RequestClass], seed: int, vocab_size: int, description: str,
                 level: int = 0):
        self.classes = classes
        self.seed = seed
        self.vocab_size = vocab_size
        self.description = description
        self.level = level  # which level's random prompts (0: none named); lengths never depend on it
        self._bounds = list(itertools.accumulate(c.share for c in classes))

    def for_level(self, level: int) -> Workload:
        """The same requests with random prompts of their own for level `level` of a run.

        Every level numbers its requests from 0, so without this level 2 would resend level 1's prompts, and a server
        with prefix caching on (vLLM's default) would serve their prefill from cache: on the H200 a tune trial's
        later levels reached a 97% prefix-cache hit rate, and their P99 fell below the first level's at twice its
        rate (results/h200/tune/confirm-prompt-reuse). The lengths and classes stay the level's, so two runs with one
        seed still get the same requests level by level (a paired comparison). A workload file's own texts cannot
        change: they repeat in every level."""
        return Workload(self.classes, self.seed, self.vocab_size, self.description, level)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def sample(self, index: int) -> tuple[str, int, int]:
        """(class, input_len, output_len) of request `index`."""
        rng = random.Random(f"qwenopt-request-{self.seed}-{index}")
        chosen = self.classes[0]
        if len(self.classes) > 1:
            u = rng.random() * self._bounds[-1]  # the last bound is 1 within 1e-6
            chosen = next((c for c, bound in zip(self.classes, self._bounds) if u < bound), self.classes[-1])
        input_len, output_len = chosen.lengths.draw(rng, index)
        return chosen.name, input_len, output_len

    def prompt(self, index: int, input_len: int) -> list[int] | str:
        """Request `index`'s prompt: a file's text, else random token ids, exactly input_len of them."""
        lengths = self.classes[0].lengths
        if isinstance(lengths, FileLengths) and lengths.entry(index).prompt is not None:
            return lengths.entry(index).prompt
        import numpy as np  # a seeded numpy stream: ~50x faster than random.randrange for long prompts

        key = [self.seed % 2 ** 63, index, 1] + ([self.level] if self.level else [])
        rng = np.random.default_rng(key)
        return rng.integers(1, _prompt_id_bound(self.vocab_size), size=input_len).tolist()

    def describe(self) -> str:
        """The row's `workload` column."""
        return self.description


def _check_context(lengths: FixedLengths, max_context: int, what: str) -> None:
    longest = lengths.input_len.high + lengths.output_len.high
    if longest > max_context:
        raise QwenoptError(f"{what}: input {lengths.input_len.high} + output {lengths.output_len.high} tokens exceed "
                           f"the model's context of {max_context}; lower them")


def make_workload(input_len: str | int | None = None, output_len: str | int | None = None, workload: str | None = None,
                  mix: str | None = None, *, seed: int = 0, vocab_size: int = 151643, max_context: int = 32768,
                  shuffle: bool = False, default_len: int = 128) -> Workload:
    """The online workload from the CLI's options: lengths (fixed or ranges), `--workload chat|FILE.jsonl` or `--mix`.

    input_len/output_len None means not given (then `default_len` for plain lengths); they cannot be combined
    with --workload or --mix, which carry their own lengths.
    """
    if workload is not None and mix is not None:
        raise QwenoptError("give --workload or --mix, not both")
    if (workload is not None or mix is not None) and (input_len is not None or output_len is not None):
        raise QwenoptError(f"--input-len/--output-len cannot be combined with {'--mix' if mix else '--workload'}, "
                           "which sets the lengths")
    if mix is not None:
        classes = []
        for name, share, lengths in parse_mix(mix):
            _check_context(lengths, max_context, f"--mix class {name}")
            classes.append(RequestClass(name, share, lengths))
        text = ",".join(f"{c.name}={c.share:g}:{str(c.lengths.input_len).replace(':', '-')}:"
                        f"{str(c.lengths.output_len).replace(':', '-')}" for c in classes)
        return Workload(classes, seed, vocab_size, f"mix {text}")
    if workload == "chat":
        if max_context < 2 * CHAT_MIN_LEN:
            raise QwenoptError(f"--workload chat needs a context of at least {2 * CHAT_MIN_LEN} tokens")
        lengths = ChatLengths(max_context)
    elif workload is not None:
        if not workload.endswith(".jsonl"):
            raise QwenoptError(f"--workload must be chat or a .jsonl file, got {workload!r}")
        entries = load_jsonl(workload, max_context)
        order = list(range(len(entries)))
        if shuffle:
            random.Random(f"qwenopt-shuffle-{seed}").shuffle(order)
        lengths = FileLengths(workload, tuple(entries), tuple(order), shuffle)
    else:
        lengths = FixedLengths(parse_length(default_len if input_len is None else input_len, "--input-len"),
                               parse_length(default_len if output_len is None else output_len, "--output-len"))
        _check_context(lengths, max_context, "--input-len/--output-len")
    return Workload([RequestClass(RESERVED_CLASS, 1.0, lengths)], seed, vocab_size, str(lengths))
