"""``python -m loadtest.report`` (see :mod:`loadtest.report`)."""

import sys

from loadtest.report import main

sys.exit(main())
