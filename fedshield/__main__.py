"""``python -m fedshield ...``: the same as the ``fedshield`` command."""

import sys

from fedshield.cli import main

sys.exit(main())
