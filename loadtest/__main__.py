"""``python -m loadtest``: run the load-test sweep and write the report (see loadtest.sweep)."""

import sys

from loadtest.sweep import main

sys.exit(main())
