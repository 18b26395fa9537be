"""A local Cytomine-compatible server: the embedded default for local runs and the demo, and the
test bed for every app.

The unmodified official ``cytomine-python-client`` talks to it over HTTP, as to a real core
(like moto for AWS). Structure: :mod:`.models` (SQLite storage and domain rules),
:mod:`.responses` (JSON shapes), :mod:`.routes` (HTTP routes and authentication),
:mod:`.app` (:class:`LocalCytomine`), :mod:`.imaging` (crops and windows), :mod:`.importers`
(folders of images with GeoJSON / CSV / Pascal VOC annotations), :mod:`.descriptors` and
:mod:`.launcher` (software from descriptors, jobs run as subprocesses or containers),
:mod:`.testing` (fixtures for app tests). See ``docs/local_server.md``.
"""

from mtdp_core.server.app import LocalCytomine
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.models import CytomineStore
from mtdp_core.server.routes import Backend, create_app

__all__ = ["Backend", "CytomineStore", "LocalCytomine", "ServerConfig", "create_app"]
