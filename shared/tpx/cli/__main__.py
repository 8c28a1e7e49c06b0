"""`python -m tpx.cli`: the `tpx` command without the console script (tests, `make demo`)."""

import sys

from tpx.cli.main import main

sys.exit(main())
