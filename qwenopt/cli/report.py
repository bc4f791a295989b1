"""Reading saved results: the cost matrix, the CI gate and the HTML report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from ..results import check_output
from . import options as o
from .app import REPORT, command, fail


@command(REPORT)
def matrix(
    files: list[Path] = typer.Argument(..., help="Result files or folders: bench, tune and load CSVs are used; "
                                                "anything else is named and skipped."),
    slo_p99: float = typer.Option(1.0, help="P99 latency target in seconds (E2E online): each configuration is "
                                            "costed at its highest load within it."),
    slo_ttft: Optional[float] = typer.Option(None, help="Online only: also require P99 TTFT within this many seconds."),
    gpu_hour_usd: o.GpuHourUsd = o.GPU_HOUR_USD,
    target_requests_per_day: Optional[float] = typer.Option(
        None, help="Add the GPUs each configuration needs to serve this many requests a day."),
    baseline: Optional[str] = typer.Option(None, help="Configuration the unit cost is relative to.",
                                           show_default="hf-fp16 (plainly served) where it meets the SLO"),
    input_len: Optional[int] = typer.Option(None, help="Only the workload(s) of this input length."),
    output_len: Optional[int] = typer.Option(None, help="Only the workload(s) of this output length."),
    output_format: str = typer.Option("table", "--format", help="table (for people), md (a README or CI comment) or csv."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the matrix here, atomically: as "
                                       "Markdown for .md, CSV for .csv, else in --format (table as CSV)."),
):
    """The cost matrix, offline and online apart: concurrency per GPU, latency, utilisation, requests/day, unit cost, $ per 1M tokens."""
    from rich.console import Console
    from rich.markup import escape

    from ..collect import collect, expand
    from ..console import errors
    from ..matrix import DEFINITIONS, cost_tables, display_rows, title, to_csv, to_markdown
    from ..results import atomic_write_text

    if output_format not in ("table", "md", "csv"):
        fail(f"--format must be table, md or csv, not {output_format!r}")
    if out is not None:
        check_output(out, suffix=None, inputs=expand(files), option="--out")
    found = collect(files)
    for line in found.warnings:
        errors.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    for path, kind in found.kinds.items():
        if kind in ("quality", "matrix"):
            errors.print(f"note: {path} holds {kind} rows, which the matrix does not use", highlight=False, soft_wrap=True)
    tables = cost_tables(found.bench, found.load, slo_p99, gpu_hour_usd, baseline, input_len, output_len, slo_ttft,
                         target_requests_per_day)
    target = target_requests_per_day is not None
    markdown = to_markdown(tables, slo_p99, slo_ttft, gpu_hour_usd, target)
    if out is not None:
        as_md = out.suffix == ".md" or (out.suffix != ".csv" and output_format == "md")
        atomic_write_text(out, markdown if as_md else to_csv(tables))
    stdout = Console(soft_wrap=output_format != "table")
    if output_format == "md":
        stdout.out(markdown, end="", highlight=False)
        return
    if output_format == "csv":
        stdout.out(to_csv(tables), end="", highlight=False)
        return
    for matrix in tables:
        _print_matrix(stdout, title(matrix, slo_p99, slo_ttft, gpu_hour_usd), *display_rows(matrix, target))
    for term, text in DEFINITIONS:
        stdout.print(f"[bold]{escape(term)}[/bold]: {escape(text)}", highlight=False)


def _print_matrix(stdout, heading: str, headers: list[str], rows: list[list[str]]) -> None:
    """A table where it fits the terminal; else one block per configuration, so no number is ever cut."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    if sum(widths) + 3 * len(widths) + 1 <= stdout.width:
        table = Table(title=escape(heading), header_style="bold")
        for name in headers:
            table.add_column(name, justify="left" if name in ("config", "load") else "right", no_wrap=True)
        for row in rows:
            table.add_row(*map(Text, row))
        stdout.print(table)
        return
    stdout.print(f"[bold]{escape(heading)}[/bold]", highlight=False)
    for row in rows:
        pairs = [f"{h} {v}" if h != "load" else v for h, v in zip(headers[1:], row[1:]) if v != "-"]
        stdout.print(f"  [bold]{escape(row[0])}[/bold]: " + escape(", ".join(pairs)), highlight=False)


@command(REPORT, "compare")
def compare_command(
    base: Path = typer.Argument(..., help="The baseline: a result CSV (bench or load rows; its .samples.jsonl "
                                          "beside it), or a folder of runs of the same cells, pooled."),
    new: Path = typer.Argument(..., help="The new result CSV or folder of runs, from the same sweep or load levels."),
    max_regression: str = typer.Option("5%", help="Largest tolerated worsening of a gated metric, e.g. 5% or 0.05; "
                                                  "the default for metrics without their own --threshold."),
    threshold: Optional[list[str]] = typer.Option(None, help="A metric's own tolerance (repeatable), e.g. "
                                                             "latency_p99_s=10%."),
    metric: Optional[list[str]] = typer.Option(None, help="Metric to gate on (repeatable): output_tok_s, req_s, "
                                                          "latency_p50_s, latency_p99_s, ttft_p50_ms, tpot_p50_ms, ...",
                                               show_default="output_tok_s, latency_p50_s, tpot_p50_ms"),
    confidence: float = typer.Option(0.95, help="Confidence of the bootstrap interval of each change."),
    fail_on_noisy: bool = typer.Option(False, help="Also fail when a change is too noisy to judge (the interval "
                                                   "straddles no change and reaches past the threshold)."),
    output_format: str = typer.Option("table", "--format",
                                      help="table (people), md (a CI comment) or json (machines)."),
):
    """CI gate: compare two result files cell by cell against the noise of both; exit 1 on a regression, an
    unusable (missing, NaN or zero) metric, or a missing or failed cell.

    With raw samples on both sides each change gets a seeded bootstrap interval over the independent timings
    (a bench cell's repeats, a load level's requests; with a folder of runs a side, runs first, then their
    timings, so drift between runs counts as noise): a regression is a change whose whole interval is worse than
    no change and reaches past the threshold; `noisy` (interval straddles no change) is shown and passes unless
    --fail-on-noisy. Without samples the point change is compared with the threshold (column `method`).
    """
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..compare import (DEFAULT_METRICS, ENVIRONMENT_NOTE, as_json, cell_label, compare,
                           environment_differences, failing, formatted, markdown, parse_threshold, parse_thresholds,
                           read_side)

    if output_format not in ("table", "md", "json"):
        fail(f"--format must be table, md or json, got {output_format!r}")
    if not 0.5 <= confidence < 1:
        fail(f"--confidence must be at least 0.5 and below 1, got {confidence}")
    default = parse_threshold(max_regression)
    thresholds = parse_thresholds(threshold)
    base_kind, base_frame, base_samples = read_side(base)
    new_kind, new_frame, new_samples = read_side(new)
    if base_kind != new_kind:
        fail(f"{base} holds {base_kind} rows and {new} holds {new_kind} rows: compare like with like")
    report = compare(base_frame, new_frame, default, tuple(metric or DEFAULT_METRICS), kind=base_kind,
                     thresholds=thresholds, base_samples=base_samples, new_samples=new_samples,
                     confidence=confidence)
    bad = failing(report, fail_on_noisy)
    noisy = int((report["verdict"] == "noisy").sum())
    summary = (f"{int(bad.sum())} of {len(report)} checks failed" if bad.any()
               else f"no regression beyond the threshold in {len(report)} checks")
    if noisy:
        summary += f"; {noisy} too noisy to judge (more --repeats narrow the interval)"
    title = f"{new} against {base} (default tolerance {default:.1%}, {confidence:.0%} intervals)"
    differences = environment_differences(base_frame, new_frame)
    if output_format == "json":
        print(as_json(report, not bad.any(), summary, differences))
    elif output_format == "md":
        print(markdown(report, title, ("**FAILED**: " if bad.any() else "passed: ") + summary, differences))
    else:
        out = Console()  # the table is the command's output: stdout
        table = Table(title=escape(title), header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        for name in ("metric", "base", "new", "change [interval]", "method", "verdict"):  # numbers never wrap
            text = name in ("metric", "method", "verdict")
            table.add_column(name, overflow="fold", no_wrap=not text, justify="left" if text else "right")
        cell = None
        for r, shown, is_bad in zip(report.to_dict("records"), formatted(report), bad):
            if shown["cell"] != cell:
                cell = shown["cell"]
                table.add_row(f"[bold]{escape(cell)}[/bold]", end_section=False)
            interval = "" if r["ci_low"] is None or r["ci_low"] != r["ci_low"] else \
                f" [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
            metric_name = r["metric"] + ("" if r["threshold"] == default else f" (tol {r['threshold']:.0%})")
            method = shown["method"].replace("bootstrap ", "boot ")
            colour = "red" if is_bad else "green" if r["verdict"] == "ok" else "yellow"
            table.add_row(metric_name, shown["base"], shown["new"], shown["change"] + interval, escape(method),
                          f"[{colour}]{escape(r['verdict'])}[/{colour}]")
        out.print(table)
        for r in report[bad].to_dict("records"):  # each failure in full on one line, whatever the width
            out.print(f"[red]failed:[/red] {escape(cell_label(r))} {r['metric']}: {escape(r['verdict'])}",
                      highlight=False, soft_wrap=True)
        if differences:
            out.print(f"[yellow]note:[/yellow] {ENVIRONMENT_NOTE}: " + escape("; ".join(differences)),
                      highlight=False, soft_wrap=True)
        out.print(("[red]regression:[/red] " if bad.any() else "") + escape(summary), highlight=False)
    if bad.any():
        raise typer.Exit(1)


@command(REPORT)
def report(
    files: list[Path] = typer.Argument(..., help="Result files or folders: bench, tune, load, quality and matrix CSVs; "
                                                "anything else is named and skipped."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    slo_p99: Optional[float] = typer.Option(None, help="Add the cost matrices at this P99 latency target (seconds) "
                                                       "and the SLO line on the load-latency curves."),
    slo_ttft: Optional[float] = typer.Option(None, help="Online matrix: also require P99 TTFT within this many seconds."),
    gpu_hour_usd: o.GpuHourUsd = o.GPU_HOUR_USD,
):
    """A self-contained HTML report: offline throughput charts, online load-latency curves, the cost matrices, every row."""
    from ..collect import collect, expand
    from ..console import console, errors
    from ..report import build_report
    from ..results import atomic_write_text

    check_output(output, suffix=None, inputs=expand(files), option="--output")
    found = collect(files)
    for line in found.warnings:
        errors.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    atomic_write_text(output, build_report(found, slo_p99, gpu_hour_usd, slo_ttft))
    counts = ", ".join(f"{len(getattr(found, k))} {k}" for k in ("bench", "load", "quality", "matrix")
                       if len(getattr(found, k)))
    console.print(f"wrote {output} ({counts or 'no'} rows from {len(found.kinds)} files)", highlight=False)
