"""The ``repfuse`` console script: the same command as the Rust binary."""

import sys

from . import _repfuse


def main() -> None:
    sys.exit(_repfuse.main(["repfuse", *sys.argv[1:]]))
