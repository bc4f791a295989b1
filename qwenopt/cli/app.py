"""The Typer app, its help panels and the one error path every command goes through.

Heavy imports (torch, transformers, vllm) happen inside command bodies so that `qwenopt --help`
stays instant and never needs a GPU stack.
"""
from __future__ import annotations

import functools
import json
from typing import NoReturn, Optional

import typer

from ..errors import QwenoptError

app = typer.Typer(
    help="Measure what it costs to serve Qwen2.5-7B under each regime, and which is cheapest at your latency target.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)

MEASURE = "Measure"
REPORT = "Report"
INSPECT = "Inspect"


def fail(message: str, code: int = 2) -> NoReturn:
    """One red `error:` line on stderr and a non-zero exit: 2 for bad input, 1 for failed work, 130 for Ctrl-C."""
    from rich.markup import escape

    from ..console import errors

    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def command(panel: str, name: str | None = None):
    """Register a command whose QwenoptError becomes `fail(...)` and whose Ctrl-C exits 130, in one place."""

    def register(function):
        @functools.wraps(function)
        def guarded(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except QwenoptError as exc:
                fail(str(exc))
            except KeyboardInterrupt:
                fail("interrupted: whatever finished is kept in the result file", 130)

        return app.command(name, rich_help_panel=panel)(guarded)

    return register


def parse_engine_args(text: Optional[str]) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QwenoptError(f"--engine-args must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise QwenoptError("--engine-args must be a JSON object, e.g. '{\"block_size\": 32}'")
    return value
