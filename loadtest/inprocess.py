"""``python -m loadtest.inprocess``: the in-process floor; the code lives in
:mod:`loadtest.run.floor` (``python -m loadtest.run.floor``)."""

import sys

from loadtest.run.floor import main

if __name__ == "__main__":
    sys.exit(main())
