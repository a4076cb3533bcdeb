"""The ``modblocks`` command: ``modblocks serve module:pipe`` serves a pipeline over HTTP."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: modblocks serve module:pipe [options]   (modblocks serve --help for the options)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; ``serve`` is the one there is."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)  # noqa: T201 - the command's help
        return 0 if args else 2
    if args[0] != "serve":
        print(f"modblocks: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        from modblocks.serve import main as serve
    except ImportError as err:
        print(  # noqa: T201 - tells how to install what is missing
            f"modblocks serve needs the serve extra ({err.name} is missing): "
            'pip install "modblocks[serve]"',
            file=sys.stderr,
        )
        return 2
    return serve(args[1:])


if __name__ == "__main__":
    sys.exit(main())
