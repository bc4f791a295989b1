"""The two records the online load generator passes between its parts, fixed here so each part can be built alone.

`RequestPlan` is what the schedule (schedule.py, from the workload) asks for: when a request should arrive and
how long its prompt and output are. `RequestRecord` is what the client (client.py) saw: every time is in seconds
relative to the request's *intended* arrival, so waiting in the client (a concurrency gate, a busy event loop)
counts as the user feels it. The metrics (metrics.py) and the sidecar are derived from records only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Outcomes: only "ok" requests enter latency figures; the rest are counted apart with their reason.
OUTCOMES = ("ok", "failed", "timeout", "truncated", "short", "overlong")


@dataclass(frozen=True)
class RequestPlan:
    index: int  # position in the level's request stream, from 0
    intended_s: float | None  # scheduled arrival, seconds after the level starts; None in closed loop (a user's turn)
    input_len: int  # prompt tokens
    output_len: int  # tokens asked for (and forced where the server allows)
    cls: str = "all"  # request class of a --mix; "all" when there is one class
    warmup: bool = False  # sent and awaited, but excluded from every figure
    # input_len is 0 for a real-prompt JSONL line without an input_len hint: the server's usage then tells


@dataclass
class RequestRecord:
    index: int
    cls: str
    warmup: bool
    intended_s: float  # scheduled arrival from the level's start (closed loop: when the user became free)
    send_lag_s: float  # actual send - intended arrival
    input_len: int
    output_len: int  # asked
    outcome: str = "ok"  # one of OUTCOMES
    ttft_s: float | None = None  # intended arrival -> first streamed token
    e2e_s: float | None = None  # intended arrival -> end of the stream
    token_times_s: list[float] = field(default_factory=list)  # each token-carrying chunk's arrival, from intended
    output_tokens: int | None = None  # generated tokens, from the server's usage report
    error: str | None = None
    prompt_tokens: int | None = None  # prompt tokens from the server's usage; None: input_len (token-id prompts)

    def to_json(self) -> dict:
        return asdict(self)
