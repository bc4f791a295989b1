"""Reading saved results: the cost matrix, the CI gate and the HTML report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from ..results import check_output
from .app import REPORT, command, fail


@command(REPORT)
def matrix(
    files: list[Path] = typer.Argument(..., help="Result files or folders: bench, tune and load CSVs are used; "
                                                "anything else is named and skipped."),
    slo_p99: float = typer.Option(1.0, help="P99 latency target in seconds (E2E online): each configuration is "
                                            "costed at its highest load within it."),
    slo_ttft: Optional[float] = typer.Option(None, help="Online only: also require P99 TTFT within this many seconds."),
    gpu_hour_usd: float = typer.Option(2.5, help="Price of one GPU-hour, for $ per 1M output and total tokens."),
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
    base: Path = typer.Argument(..., help="The baseline result CSV."),
    new: Path = typer.Argument(..., help="The new result CSV, from the same sweep."),
    max_regression: str = typer.Option("5%", help="Largest tolerated worsening of any gated metric, e.g. 5% or 0.05."),
    metric: Optional[list[str]] = typer.Option(None, help="Metric to gate on (repeatable): output_tok_s, req_s, "
                                                          "latency_p50_s, latency_p99_s, ttft_p50_ms, tpot_p50_ms.",
                                               show_default="output_tok_s, latency_p50_s, tpot_p50_ms"),
):
    """CI gate: compare two result files cell by cell; exit 1 on a regression, a missing or a failed cell."""
    from rich.table import Table

    from ..compare import DEFAULT_METRICS, compare, failed, parse_threshold
    from ..console import console
    from ..results import read_results

    try:
        threshold = parse_threshold(max_regression)
        report = compare(read_results(base), read_results(new), threshold, tuple(metric or DEFAULT_METRICS))
    except QwenoptError as exc:
        fail(str(exc))
    table = Table(title=f"{new} against {base} (tolerance {threshold:.1%})", header_style="bold")
    for name in ("regime", "quant", "batch", "in", "out", "metric", "base", "new", "change", "verdict"):
        table.add_column(name, justify="left" if name in ("regime", "quant", "metric", "verdict") else "right")
    for r in report.to_dict("records"):
        verdict = r["verdict"] if r["verdict"] == "ok" else f"[red]{r['verdict']}[/red]"
        table.add_row(r["regime"], r["quant"], r["batch_size"], r["input_len"], r["output_len"], r["metric"],
                      f"{r['base']:.4g}", "-" if r["new"] is None else f"{r['new']:.4g}",
                      "-" if r["change"] is None else f"{r['change']:+.1%}", verdict)
    console.print(table)
    if failed(report):
        console.print(f"[red]regression:[/red] {int((report['verdict'] != 'ok').sum())} of {len(report)} checks failed")
        raise typer.Exit(1)
    console.print(f"no regression beyond {threshold:.1%} in {len(report)} checks")


@command(REPORT)
def report(
    files: list[Path] = typer.Argument(..., help="Result files or folders: bench, tune, load, quality and matrix CSVs; "
                                                "anything else is named and skipped."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    slo_p99: Optional[float] = typer.Option(None, help="Add the cost matrices at this P99 latency target (seconds) "
                                                       "and the SLO line on the load-latency curves."),
    slo_ttft: Optional[float] = typer.Option(None, help="Online matrix: also require P99 TTFT within this many seconds."),
    gpu_hour_usd: float = typer.Option(2.5, help="Price of one GPU-hour, for the cost matrix."),
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
