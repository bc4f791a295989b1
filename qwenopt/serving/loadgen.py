"""Run one load level: send a plan stream open or closed loop and collect a RequestRecord per request.

Open loop: each request is sent at its intended time, whether or not earlier ones have finished; an optional
`max_concurrency` gate may hold it back, and that wait counts in its latency (TTFT and E2E run from the
intended time). Closed loop: `concurrency` users, each sending its next request when its last one finished;
a request's intended time is the moment its user became free.

One event loop parses a few thousand chunks a second; beyond that `workers` processes each run their own
loop on their share of the requests (plan index modulo workers; closed-loop users likewise). CLOCK_MONOTONIC
(`time.perf_counter`) is one clock for every process on Linux, so all workers share the level's start time.
The send lag (when the runner got to a request - its intended time) is each record's `send_lag_s`: a busy
loop shows there, and the metrics mark such a level `client-bound`.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import dataclasses
import multiprocessing
import queue as queue_mod
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import QwenoptError
from .client import Target, default_prompts, encode_body, new_session, stream_completion
from .samples import RequestPlan, RequestRecord

START_LEAD_S = 0.05  # from "go" to the level's time zero, so the first request is not already late
SPIN_S = 0.0015  # the last stretch before a request is due, spent yielding rather than in the timer
FLUSH_S = 0.05  # how often a worker process sends its finished records home
# Streamed chunks/s one worker process is given by default: one aiohttp process parsed 15,400 chunks/s on a quiet
# core (results/cpu/http_clients.txt) and 3,000-5,500 on a busy one (http_clients_busy.txt): the busy figure, so a
# worker keeps room for its schedule.
CHUNKS_PER_WORKER = 3000.0
USERS_PER_WORKER = 64  # closed loop: a guess (their chunk rate is the server's to set); --workers overrides it


@dataclass(frozen=True)
class Level:
    """One load level. `plans` makes the level's plan stream (a picklable callable: workers call it themselves)."""
    plans: Callable[[], Iterable[RequestPlan]]
    mode: str = "open"  # open | closed
    concurrency: int | None = None  # closed loop: users
    max_concurrency: int | None = None  # open loop: a gate on requests in flight (its wait counts in latency)
    duration_s: float | None = None  # no request starts after this many seconds
    workers: int = 1
    prompts: object = None  # anything with .prompt(index, input_len), e.g. the workload; None: seeded random ids

    def __post_init__(self):
        if self.mode not in ("open", "closed"):
            raise QwenoptError(f"unknown load mode {self.mode!r}: open or closed")
        if self.mode == "closed" and (self.concurrency or 0) < 1:
            raise QwenoptError("a closed-loop level needs --concurrency of at least 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise QwenoptError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")
        if self.workers < 1:
            raise QwenoptError(f"--workers must be at least 1, got {self.workers}")
        # each worker needs a user, or a share of the gate (the cap is split evenly over the workers)
        cap = self.concurrency if self.mode == "closed" else self.max_concurrency
        if cap is not None and self.workers > cap:
            object.__setattr__(self, "workers", cap)


def default_workers(rate: float | None, concurrency: int | None, tokens: float, cpus: int | None = None) -> int:
    """Enough worker processes for the offered chunks/s (rate x tokens per request) or users, at most half the
    CPUs: the server, or its API process, may share the machine."""
    import os

    cpus = cpus or os.cpu_count() or 1
    if rate is not None:
        need = math.ceil(rate * max(tokens, 1) / CHUNKS_PER_WORKER)
    else:
        need = math.ceil((concurrency or 1) / USERS_PER_WORKER)
    return max(1, min(need, cpus // 2))


def run_loop(coroutine):
    """Run a worker's event loop: uvloop where installed (results/cpu/http_clients.txt: lower send lag than
    asyncio's own loop at most rates), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _my_plans(level: Level, worker: int) -> Iterable[RequestPlan]:
    """This worker's share: open loop every workers-th plan; closed loop the plans of its users' turns (plan i is
    user i % C's), so each worker gets plans in proportion to its users."""
    slots = level.concurrency if level.mode == "closed" else None
    for plan in level.plans():
        if (plan.index % slots if slots else plan.index) % level.workers == worker:
            yield plan


async def run_worker(target: Target, level: Level, worker: int, start: float | None,
                     emit: Callable[[RequestRecord], None]) -> None:
    """This worker's share of a level, from `start` (perf_counter seconds; None: as soon as it is set up)."""
    prompts = level.prompts or default_prompts(target.vocab_size, target.seed)
    prompts.prompt(0, 1)  # first use may import (numpy): not on the level's clock
    plans = iter(_my_plans(level, worker))
    async with new_session() as session:
        start = start if start is not None else time.perf_counter() + START_LEAD_S
        end = start + level.duration_s if level.duration_s else float("inf")
        if level.mode == "open":
            await _open_loop(session, target, level, worker, plans, prompts, start, end, emit)
        else:
            users = len(range(worker, level.concurrency, level.workers))
            await asyncio.gather(*(_user(session, target, plans, prompts, start, end, emit) for _ in range(users)))


async def until(when: float) -> None:
    """Sleep to `when` (perf_counter): the loop's timer wakes up to a millisecond late (epoll's resolution), so the
    last millisecond is spent yielding to other tasks instead; at over 1,000 req/s the gaps are shorter anyway."""
    delay = when - time.perf_counter()
    if delay > SPIN_S:
        await asyncio.sleep(delay - SPIN_S)
    while time.perf_counter() < when:
        await asyncio.sleep(0)


async def _open_loop(session, target, level, worker, plans, prompts, start, end, emit) -> None:
    gate = None
    if level.max_concurrency:  # this worker's share of the cap
        share = level.max_concurrency // level.workers + (worker < level.max_concurrency % level.workers)
        gate = asyncio.Semaphore(share)
    tasks: set[asyncio.Task] = set()

    async def fire(plan: RequestPlan, body: bytes, intended: float) -> None:
        lag = time.perf_counter() - intended
        async with gate or contextlib.nullcontext():
            emit(await stream_completion(session, target, plan, body, intended, start, lag))

    try:
        for plan in plans:
            intended = start + (plan.intended_s or 0.0)
            if intended >= end:
                break
            body = encode_body(target, plan, prompts)  # before its time: sending is all that is left then
            await until(intended)
            task = asyncio.create_task(fire(plan, body, intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _user(session, target, plans, prompts, start, end, emit) -> None:
    # the first body is built before the level starts: C users all due at the start must not wait in line for
    # each other's prompt building (that would be the client's lag, not the server's latency)
    plan = next(plans, None)
    body = encode_body(target, plan, prompts) if plan is not None else None
    await until(start)
    free_at = start
    while plan is not None:  # users of one worker share its plan iterator: each takes the next plan
        if free_at >= end:
            return
        lag = time.perf_counter() - free_at
        emit(await stream_completion(session, target, plan, body, free_at, start, lag))
        free_at = time.perf_counter()
        plan = next(plans, None)
        body = encode_body(target, plan, prompts) if plan is not None else None


def run_level(target: Target, level: Level, on_record: Callable[[RequestRecord], None] | None = None,
              inline: bool | None = None) -> list[RequestRecord]:
    """Run a level to its end and return every finished request's record.

    `inline` runs one worker's loop in this process (default when workers == 1): fine for tests, but a progress
    display's thread then takes the GIL from the loop in the middle of a schedule; the CLI passes False, so even
    one worker gets a process of its own.
    On Ctrl-C the records finished so far are kept in `interrupted.records` of the KeyboardInterrupt raised.
    """
    records: list[RequestRecord] = []

    def keep(record: RequestRecord) -> None:
        records.append(record)
        if on_record:
            on_record(record)

    try:
        if (level.workers == 1) if inline is None else inline:
            run_loop(run_worker(target, level, 0, None, keep))
        else:
            _run_processes(target, level, keep)
    except KeyboardInterrupt as interrupt:
        interrupt.records = records
        raise
    return records


def _worker_main(target: Target, level: Level, worker: int, out, go, start_value, stop) -> None:
    """A worker process: ready, wait for go, run its share, send records home in batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sets `stop` on Ctrl-C
    import aiohttp  # noqa: F401  imported before "ready": importing it takes longer than the start lead

    if level.prompts is None:  # built once here, before "ready", not after the level's clock started
        level = dataclasses.replace(level, prompts=default_prompts(target.vocab_size, target.seed))
    level.prompts.prompt(0, 1)  # first use may import (numpy)
    batch: list[RequestRecord] = []
    gc.freeze()  # what exists now is never garbage: fewer and shorter collector pauses in the middle of the level
    # the queue's feeder thread (pickling records home) holds the GIL for at most 0.5 ms at a time, not 5: on the H100
    # host at 1,600 req/s the send lag's max fell from 4.3-14.4 to 1.5-3.2 ms (results/h100/loadgen/send_lag_probe)
    sys.setswitchinterval(0.0005)
    out.put(("ready", worker, None))
    go.wait()

    async def main() -> None:
        async def flush() -> None:
            while True:
                await asyncio.sleep(FLUSH_S)
                if batch:
                    out.put(("records", worker, batch[:]))
                    batch.clear()
                if stop.is_set():
                    raise asyncio.CancelledError

        flusher = asyncio.create_task(flush())
        job = asyncio.create_task(run_worker(target, level, worker, start_value.value, batch.append))
        done, _ = await asyncio.wait({flusher, job}, return_when=asyncio.FIRST_COMPLETED)
        for task in (flusher, job):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        if job in done and job.exception():
            raise job.exception()

    error = None
    try:
        run_loop(main())
    except BaseException as exc:  # reported home: a worker must never die silently
        error = f"{type(exc).__name__}: {exc}"
    if batch:
        out.put(("records", worker, batch))
    out.put(("done", worker, error))


def _run_processes(target: Target, level: Level, keep: Callable[[RequestRecord], None]) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads (the progress display)
    out, go, stop, start_value = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_worker_main, args=(target, level, w, out, go, start_value, stop), daemon=True)
             for w in range(level.workers)]
    for proc in procs:
        proc.start()
    try:
        ready = 0
        while ready < len(procs):
            kind, _, _ = _get(out, procs)
            ready += kind == "ready"
        start_value.value = time.perf_counter() + 4 * START_LEAD_S  # processes wake in turn
        go.set()
        done, errors = 0, []
        while done < len(procs):
            kind, _, payload = _get(out, procs)
            if kind == "records":
                for record in payload:
                    keep(record)
            elif kind == "done":
                done += 1
                if payload:
                    errors.append(payload)
        if errors:
            raise QwenoptError(f"a load worker failed: {errors[0]}")
    except KeyboardInterrupt:
        stop.set()
        deadline = time.monotonic() + 5
        finished = 0
        while finished < len(procs) and time.monotonic() < deadline:  # collect what the workers still hold
            with contextlib.suppress(queue_mod.Empty):
                kind, _, payload = out.get(timeout=0.2)
                if kind == "records":
                    for record in payload:
                        keep(record)
                finished += kind == "done"
        raise
    finally:
        go.set()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def _get(out, procs):
    """The next message from the workers; a worker that died without saying so is an error, not a hang."""
    while True:
        try:
            return out.get(timeout=0.5)
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise QwenoptError(f"a load worker process died (exit code {dead[0].exitcode})") from None
