"""The qwenopt command line: one module per command group, each command a thin function over the modules."""
from .app import app
from . import bench, confirm, gateway, inspect, load, report, tune  # noqa: F401  registers the commands


def main() -> None:
    app()
