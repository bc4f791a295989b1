"""`python -m qwenopt`: the CLI, for environments where the console script is not on PATH."""
from .cli import main

main()
