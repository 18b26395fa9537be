"""``python -m mtdp_core.appengine TASK``: the entrypoint of the task containers."""

import sys

from mtdp_core.appengine.runner import main

sys.exit(main())
