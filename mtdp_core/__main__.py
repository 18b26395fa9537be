"""``python -m mtdp_core`` is the ``mtdp`` command."""

import sys

from mtdp_core.cli import main

sys.exit(main())
