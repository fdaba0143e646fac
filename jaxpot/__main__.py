"""``python -m jaxpot``: the command line (see :mod:`jaxpot.cli`)."""

import sys

from jaxpot.cli import main

if __name__ == "__main__":
    sys.exit(main())
