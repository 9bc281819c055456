"""``python -m factory.cli``: the command line (what multi-process launchers run)."""

import sys

from factory.cli import main

CHANGES_NO_RESULT = True

sys.exit(main())
