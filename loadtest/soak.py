"""``python -m loadtest.soak``: the soak test; the code lives in :mod:`loadtest.run.soak`."""

import sys

from loadtest.run.soak import main

if __name__ == "__main__":
    sys.exit(main())
