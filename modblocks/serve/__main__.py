"""``python -m modblocks.serve module:pipe``: serve a pipeline (see `modblocks.serve`)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
