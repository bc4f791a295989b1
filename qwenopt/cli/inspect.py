"""What this machine can run, and the fingerprint every row carries."""
from __future__ import annotations

import json

import typer

from .app import INSPECT, command


@command(INSPECT)
def regimes():
    """List every regime: engine, weights, attention, the extra it needs, and whether this machine can run it."""
    from rich.table import Table

    from ..console import console
    from ..regimes import REGIMES, availability, gpu_count

    gpus = gpu_count()
    table = Table(title=f"qwenopt regimes ({gpus} CUDA GPU{'s' if gpus != 1 else ''} visible)", header_style="bold")
    for name in ("regime", "engine", "weights", "attention", "extra", "runs here", "what it is"):
        table.add_column(name)
    for spec in REGIMES.values():
        ok, why = availability(spec, gpus)
        table.add_row(spec.name, spec.engine, spec.weights, spec.attn, spec.extra or "-",
                      "[green]yes[/green]" if ok else f"[yellow]no[/yellow]: {why}", spec.summary)
    console.print(table)


@command(INSPECT)
def env(as_json: bool = typer.Option(False, "--json", help="Print the fingerprint as JSON.")):
    """Print the environment fingerprint that every result row carries."""
    from ..console import console
    from ..telemetry import fingerprint

    info = fingerprint()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        console.print(f"[bold]{key:>13}[/bold]  {value if value is not None else '-'}", highlight=False)
