"""What this machine can run, and the fingerprint every row carries."""
from __future__ import annotations

import json

import typer

from .app import INSPECT, command


@command(INSPECT)
def regimes():
    """List every regime: engine, weights, attention, the extra it needs, and whether this machine can run it."""
    from rich.markup import escape

    from ..attention import gpu_capability, kernels_here
    from ..console import fitted_table, stdout
    from ..regimes import REGIMES, availability, gpu_count

    gpus = gpu_count()
    rows, hints = [], []
    for spec in REGIMES.values():
        ok, why = availability(spec, gpus)
        if not ok:
            hints.append(f"{spec.name}: {why}")
        runs = "[green]yes[/green]" if ok else "[yellow]no[/yellow]" + ("" if why.startswith("needs a") else "*")
        if not ok and why.startswith("needs a"):
            runs += f": {escape(why[6:])}"
        rows.append([escape(spec.name), escape(spec.weights), escape(spec.attn), runs, escape(spec.summary)])
    title = f"qwenopt regimes ({gpus} CUDA GPU{'s' if gpus != 1 else ''} visible)"
    stdout.print(fitted_table(title, ["regime", "weights", "attention", "runs here", "what it is"], rows))
    # Install hints whole, one a line, so they can be copied (markup escaped: it would eat the [extra]).
    for hint in hints:
        if "pip install" in hint:
            stdout.print(f"* {escape(hint)}", soft_wrap=True, highlight=False)
    capability = gpu_capability() if gpus else None
    kernels = [[escape(k.name), "[green]yes[/green]" if why is None else f"[yellow]no[/yellow]: {escape(why)}",
                escape(k.summary)] for k, why in kernels_here(capability)]
    where = f"sm_{capability[0]}{capability[1]}" if capability else "no CUDA GPU"
    stdout.print(fitted_table(f"attention kernels for transformers regimes (--attn; {where})",
                              ["attn", "runs here", "what it is"], kernels))


@command(INSPECT)
def env(as_json: bool = typer.Option(False, "--json", help="Print the fingerprint as JSON.")):
    """Print the environment fingerprint that every result row carries."""
    from ..console import stdout
    from ..telemetry import fingerprint

    info = fingerprint()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        stdout.print(f"[bold]{key:>13}[/bold]  {value if value is not None else '-'}", highlight=False)
