"""``python -m repfuse``: the ``repfuse`` command."""

from ._cli import main

main()
