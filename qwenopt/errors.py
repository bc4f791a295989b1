"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class QwenoptError(Exception):
    """A user-facing error: bad input, a missing extra, a missing GPU, a malformed file."""
