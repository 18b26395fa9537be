"""Where the repository and the real-data folder are."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: ../shared/data (or $MTDP_SHARED_DATA): real images for tests marked ``realdata``.
SHARED_DATA = Path(os.environ.get("MTDP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
#: A tiny app (descriptor and workflow) that the server tests register and launch.
PROBE_APP = REPO_ROOT / "tests" / "server" / "probe_app"
