"""``python -m fused_rnn.bench``: see fused_rnn.bench.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
