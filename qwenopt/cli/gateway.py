"""The gateway command: priority classes, caps, a timeout and bounded admission in front of an OpenAI server."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from .app import command

SERVE = "Serve"


@command(SERVE)
def gateway(
    upstream: Optional[str] = typer.Option(None, help="Base URL of the OpenAI-compatible server behind the gateway, "
                                                      "e.g. http://127.0.0.1:8000/v1 (required here or in --config)."),
    port: Optional[int] = typer.Option(None, help="Port the gateway listens on.", show_default="8080"),
    host: Optional[str] = typer.Option(None, help="Address the gateway listens on.", show_default="127.0.0.1"),
    config: Optional[Path] = typer.Option(None, help="A gateway.toml with any field of GatewayConfig "
                                                     "(qwenopt/serving/policy.py), in a gateway table or at the "
                                                     "top level; flags override it."),
    upstream_priority: Optional[bool] = typer.Option(
        None, "--upstream-priority/--no-upstream-priority",
        help="Set vLLM's request `priority` by class (high 0, medium 1, low 2); the upstream must run "
             "`vllm serve --scheduling-policy priority`.", show_default="off"),
    max_in_flight: Optional[int] = typer.Option(None, help="Requests upstream at once; the rest queue by class "
                                                           "(0: no admission control).", show_default="64"),
    timeout: Optional[float] = typer.Option(None, help="Seconds a request may take in all, queue included.",
                                            show_default="30"),
    max_tokens: Optional[int] = typer.Option(None, help="Cap on generated tokens (and the value sent when a request "
                                                        "gives none).", show_default="2048"),
    max_prompt_tokens: Optional[int] = typer.Option(None, help="Longer prompts are answered 400.",
                                                    show_default="30720"),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer folder for counting text prompts.",
                                            show_default="the upstream model folder's, if local; else words"),
):
    """An OpenAI-compatible gateway: priority by prompt length, caps, timeout, 429 when full, /metrics, /health."""
    from ..console import console
    from ..serving.gateway import build_app, require_serve, serve
    from ..serving.launcher import check_port_free
    from ..serving.policy import load_gateway_config

    require_serve()
    settings = load_gateway_config(config, upstream=upstream, port=port, host=host,
                                   upstream_priority=upstream_priority, max_in_flight=max_in_flight,
                                   timeout_s=timeout, max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens,
                                   tokenizer=tokenizer)
    if not settings.upstream.startswith(("http://", "https://")):
        raise QwenoptError("give the upstream's base URL with --upstream (or upstream = ... in --config), "
                           "e.g. http://127.0.0.1:8000/v1")
    check_port_free(settings.host, settings.port)
    app = build_app(settings)  # a bad --tokenizer fails here, before the gateway says it is up
    console.print(f"gateway on http://{settings.host}:{settings.port}/v1 -> {settings.upstream} "
                  f"(max in flight {settings.max_in_flight or 'unbounded'}, timeout {settings.timeout_s:g} s, "
                  f"vLLM priority {'on' if settings.upstream_priority else 'off'}); /metrics, /health",
                  highlight=False)
    serve(app, settings)
