"""What a person sees while a sweep runs and after: a rich progress bar and a summary table."""
from __future__ import annotations

import math
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .stats import RELIABLE_P99_SAMPLES

console = Console(stderr=True)
errors = Console(stderr=True)  # one-line errors always go to stderr


@contextmanager
def sweep_progress(plan):
    """Yield an on_iteration callback that advances one bar over every warm-up and timed iteration."""
    per_cell = plan.options.warmup + plan.options.repeats
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    ) as progress:
        total = None if plan.search else len(plan.cells) * per_cell  # a search does not know its cells ahead
        task = progress.add_task(plan.spec.name, total=total)

        def on_iteration(cell, phase: str) -> None:
            label = f"{plan.spec.name} bs={cell.batch_size} in={cell.input_len} out={cell.output_len} {phase}"
            progress.update(task, advance=1, description=label)

        yield on_iteration


@contextmanager
def load_progress(total: int):
    """Yield a callback that advances one bar per finished request."""
    with Progress(TextColumn("[bold]load"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("load", total=total)
        yield lambda: progress.advance(task)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value, digits: int = 1) -> str:
    return "-" if _missing(value) else f"{value:,.{digits}f}"


def summary_table(rows: list[dict]) -> Table:
    table = Table(title="qwenopt bench", header_style="bold")
    for name in ("batch", "in", "out", "status", "out tok/s", "P50 s", "P99 s", "TTFT P50 ms", "TPOT P50 ms",
                 "GPU peak GiB", "roofline eff"):
        table.add_column(name, justify="right")
    flagged = False
    for r in rows:
        p99 = _fmt(r.get("latency_p99_s"), 3)
        if r.get("status") == "ok" and (r.get("samples") or 0) < RELIABLE_P99_SAMPLES:
            p99 += "*"
            flagged = True
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/red]"
        table.add_row(
            str(r["batch_size"]), str(r["input_len"]), str(r["output_len"]), status, _fmt(r.get("output_tok_s")),
            _fmt(r.get("latency_p50_s"), 3), p99, _fmt(r.get("ttft_p50_ms")), _fmt(r.get("tpot_p50_ms"), 2),
            _fmt(r.get("gpu_mem_peak_gib"), 2),
            "-" if _missing(r.get("roofline_eff")) else f"{r['roofline_eff']:.0%}",
        )
    if flagged:
        table.caption = f"* P99 from fewer than {RELIABLE_P99_SAMPLES} samples: read it as the maximum"
    return table
