"""Small helpers several test modules share."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flag(argv: list[str], name: str) -> str:
    """The value following a flag, which must appear exactly once."""
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]
