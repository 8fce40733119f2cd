"""``python -m loadtest``: run the load-test sweep and write the report (see loadtest.run.sweep)."""

import sys

from loadtest.run.sweep import main

sys.exit(main())
