"""The gateway's rules, apart from HTTP: priority classes by prompt length, caps, and bounded admission.

Classes follow the reference deployment (high < 128, medium < 2048, low otherwise), counted in tokens:
a token-id prompt counts its ids; a text prompt is counted by a tokenizer when the gateway has one, else by
whitespace-separated words (the article's own unit: "< 128 words high"). `/metrics` says which unit it used.

Admission keeps at most `max_in_flight` requests upstream; the rest wait in one bounded FIFO queue per
class and are let in highest class first. A request whose class queue is full is shed (429); when all
queues together hold `max_queued`, an arriving request pushes out the newest waiter of the lowest class
below its own, so the low class is shed first and the high class last.
"""
from __future__ import annotations

import asyncio
import dataclasses
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import QwenoptError

CLASSES = ("high", "medium", "low")  # admission order; the index is vLLM's `priority` (lower runs sooner)


@dataclass
class GatewayConfig:
    upstream: str = ""  # the OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1
    host: str = "127.0.0.1"
    port: int = 8080
    high_below: int = 128  # prompts shorter than this are high priority
    medium_below: int = 2048  # ... shorter than this medium, the rest low
    max_tokens: int = 2048  # cap on generated tokens; also the value sent when a request gives none
    max_tokens_over_cap: str = "clamp"  # clamp: send the cap upstream; reject: answer 400
    max_prompt_tokens: int = 30720  # longer prompts get 400 (32K context minus the 2,048 generated)
    timeout_s: float = 30.0  # whole-request deadline: queueing, upstream and streaming
    max_in_flight: int = 64  # requests upstream at once; 0 = no admission control (no queue, no 429)
    queue_high: int = 256  # waiting requests per class
    queue_medium: int = 128
    queue_low: int = 64
    max_queued: int = 0  # all classes together; 0 = the sum of the class queues
    in_flight_high: int = 0  # requests of the class upstream at once (0: only max_in_flight bounds it), so long
    in_flight_medium: int = 0  # prompts cannot take every place and leave short ones queued behind them
    in_flight_low: int = 0
    retry_after_s: int = 1  # the Retry-After of a 429
    upstream_priority: bool = False  # set vLLM's body `priority` (needs `vllm serve --scheduling-policy priority`)
    tokenizer: str = ""  # folder of a tokenizer for text prompts; empty: the upstream model's, if local, else words
    check_model: bool = True  # 404 for a model the upstream does not list

    def __post_init__(self):
        positive = ("high_below", "medium_below", "max_tokens", "max_prompt_tokens", "port")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise QwenoptError(f"gateway config: {name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("max_in_flight", "queue_high", "queue_medium", "queue_low", "max_queued", "retry_after_s",
                     "in_flight_high", "in_flight_medium", "in_flight_low"):
            if int(getattr(self, name)) < 0:
                raise QwenoptError(f"gateway config: {name} must be 0 or more, got {getattr(self, name)!r}")
        if self.high_below >= self.medium_below:
            raise QwenoptError(f"gateway config: high_below ({self.high_below}) must be below medium_below "
                               f"({self.medium_below})")
        if self.max_tokens_over_cap not in ("clamp", "reject"):
            raise QwenoptError(f"gateway config: max_tokens_over_cap must be clamp or reject, "
                               f"got {self.max_tokens_over_cap!r}")
        if not self.timeout_s > 0:
            raise QwenoptError(f"gateway config: timeout_s must be positive, got {self.timeout_s!r}")
        self.upstream = self.upstream.rstrip("/")

    def queue_limits(self) -> dict[str, int]:
        return {"high": self.queue_high, "medium": self.queue_medium, "low": self.queue_low}

    def class_caps(self) -> dict[str, int]:
        return {"high": self.in_flight_high, "medium": self.in_flight_medium, "low": self.in_flight_low}

    def describe(self) -> str:
        """The settings that change what a load row measures, for its `gateway` column (e.g. in (b) vs (c))."""
        parts = ["priority upstream" if self.upstream_priority else "no upstream priority",
                 f"classes <{self.high_below}/<{self.medium_below}", f"max_tokens {self.max_tokens}",
                 f"timeout {self.timeout_s:g}s"]
        caps = self.class_caps()
        if self.max_in_flight or any(caps.values()):
            parts.append(f"in-flight {self.max_in_flight or 'unbounded'}"
                         + ("".join(f", {k} at most {v}" for k, v in caps.items() if v))
                         + f", queues {self.queue_high}/{self.queue_medium}/{self.queue_low}"
                         + (f" (all {self.max_queued})" if self.max_queued else ""))
        else:
            parts.append("no admission control")
        return ", ".join(parts)


def load_gateway_config(path: str | Path | None, **overrides) -> GatewayConfig:
    """A gateway.toml (a [gateway] table, or the keys at the top level) with flags given on top of it."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise QwenoptError(f"no such config file: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise QwenoptError(f"cannot parse {path}: {exc}") from None
        data = data.get("gateway", data)
        values = {str(key).replace("-", "_"): value for key, value in data.items()}
        known = {field.name for field in dataclasses.fields(GatewayConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise QwenoptError(f"{path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return GatewayConfig(**values)
    except (TypeError, ValueError) as exc:
        raise QwenoptError(f"gateway config: {exc}") from None


class BadRequest(Exception):
    """The request breaks a rule: becomes an OpenAI-style error with this status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 klass: str = "none"):
        super().__init__(message)
        self.status, self.param, self.code, self.klass = status, param, code, klass


def words(text: str) -> int:
    return len(text.split())


def prompt_texts_and_ids(body: dict, chat: bool) -> tuple[list[str], int]:
    """The request's prompt as (texts, number of token ids): completions take text, ids or lists of either."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", param="messages")
        texts = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):  # content parts: only text parts count
                texts += [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
        return texts, 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt], 0
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [], len(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        texts = [p for p in prompt if isinstance(p, str)]
        id_lists = [p for p in prompt if isinstance(p, list)]
        if not all(isinstance(t, int) for ids in id_lists for t in ids):
            raise BadRequest("prompt lists must hold token ids (integers)", param="prompt")
        return texts, sum(map(len, id_lists))
    raise BadRequest("prompt must be a string, a list of token ids, or a list of either", param="prompt")


@dataclass
class Admitted:
    """A request that passed the rules: its class, its length, and the body to send upstream."""

    klass: str
    prompt_len: int
    body: dict


def apply_rules(body: dict, chat: bool, config: GatewayConfig, count_text: Callable[[str], int]) -> Admitted:
    """Classify by prompt length, enforce the prompt cap and the max_tokens cap, set vLLM's priority."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    texts, ids = prompt_texts_and_ids(body, chat)
    length = ids + sum(count_text(text) for text in texts)
    klass = "high" if length < config.high_below else "medium" if length < config.medium_below else "low"
    if length > config.max_prompt_tokens:
        raise BadRequest(f"the prompt is {length} tokens; this gateway admits at most {config.max_prompt_tokens}",
                         param="messages" if chat else "prompt", code="prompt_too_long", klass=klass)
    body = dict(body)
    keys = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None] or ["max_tokens"]
    for key in keys:
        asked = body.get(key, config.max_tokens)
        if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
            raise BadRequest(f"{key} must be a positive integer", param=key, klass=klass)
        if asked > config.max_tokens and config.max_tokens_over_cap == "reject":
            raise BadRequest(f"{key} is {asked}; this gateway allows at most {config.max_tokens}", param=key,
                             code="max_tokens_over_cap", klass=klass)
        body[key] = min(asked, config.max_tokens)
    min_tokens = body.get("min_tokens")
    if isinstance(min_tokens, int) and min_tokens > config.max_tokens:
        raise BadRequest(f"min_tokens is {min_tokens}; this gateway allows at most {config.max_tokens}",
                         param="min_tokens", klass=klass)
    if config.upstream_priority:
        body["priority"] = CLASSES.index(klass)
    return Admitted(klass, length, body)


class Shed(Exception):
    """No room: the request is answered 429 with Retry-After."""


class Ticket:
    """One request's place in admission: `granted` a slot, `queued` in its class queue, `shed` or `released`."""

    def __init__(self, admission: "Admission", klass: str):
        self.admission, self.klass = admission, klass
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.state = "new"

    async def wait(self) -> None:
        """Until the slot is granted; raises Shed if pushed out. Cancelled or timed out: leaves the queue."""
        try:
            await asyncio.shield(self.future)
        except asyncio.CancelledError:
            self.release()  # granted in the same instant or still queued: either way nothing stays held
            raise

    def release(self) -> None:
        """Give back the slot or the queue place; a second call frees nothing."""
        self.admission._leave(self)


class Admission:
    """At most `max_in_flight` upstream, and at most a class's own cap of them; bounded FIFO queues per class,
    served high class first (a class at its cap waits while a lower one with room goes ahead)."""

    def __init__(self, config: GatewayConfig):
        self.max_in_flight = config.max_in_flight
        self.caps = config.class_caps()
        self.limits = config.queue_limits()
        self.max_queued = config.max_queued or sum(self.limits.values())
        self.in_flight = {klass: 0 for klass in CLASSES}
        self.queues: dict[str, deque[Ticket]] = {klass: deque() for klass in CLASSES}

    def queued(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def enter(self, klass: str) -> Ticket:
        """A ticket holding a slot, or queued; raises Shed when neither its queue nor a lower class has room."""
        ticket = Ticket(self, klass)
        ahead = CLASSES[:CLASSES.index(klass) + 1]  # a waiter of this class or a higher one goes first
        if self._room(klass) and not any(self.queues[k] for k in ahead):
            self._grant(ticket)
            return ticket
        if len(self.queues[klass]) >= self.limits[klass]:
            raise Shed(f"the {klass} priority queue is full ({self.limits[klass]} waiting)")
        if self.queued() >= self.max_queued:
            victim = self._lowest_below(klass)
            if victim is None:
                raise Shed(f"the gateway queue is full ({self.max_queued} waiting)")
            self.queues[victim.klass].remove(victim)
            victim.state = "shed"
            victim.future.set_exception(Shed(f"pushed out of the full queue by a {klass} priority request"))
        ticket.state = "queued"
        self.queues[klass].append(ticket)
        return ticket

    def _room(self, klass: str) -> bool:
        """A place upstream for a request of this class: under the shared bound and under its class's own."""
        total = not self.max_in_flight or sum(self.in_flight.values()) < self.max_in_flight
        return total and (not self.caps[klass] or self.in_flight[klass] < self.caps[klass])

    def _lowest_below(self, klass: str) -> Ticket | None:
        for lower in reversed(CLASSES[CLASSES.index(klass) + 1:]):
            if self.queues[lower]:
                return self.queues[lower][-1]  # the newest: it has waited least
        return None

    def _grant(self, ticket: Ticket) -> None:
        self.in_flight[ticket.klass] += 1
        ticket.state = "granted"
        ticket.future.set_result(None)

    def _leave(self, ticket: Ticket) -> None:
        if ticket.state == "queued":
            self.queues[ticket.klass].remove(ticket)
            ticket.future.cancel()
        elif ticket.state == "granted":
            self.in_flight[ticket.klass] -= 1
            self._admit_next()
        if ticket.state != "shed":
            ticket.state = "released"

    def _admit_next(self) -> None:
        while True:
            klass = next((k for k in CLASSES if self.queues[k] and self._room(k)), None)
            if klass is None:
                return
            self._grant(self.queues[klass].popleft())
