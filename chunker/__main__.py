"""`python -m chunker ...`: the same as the `chunker` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
