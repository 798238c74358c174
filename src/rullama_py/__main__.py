"""`python -m rullama_py ...`: the same as the `rullama` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
