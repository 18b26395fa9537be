"""A local Cytomine-compatible server: the embedded default for local runs and the demo, and the
test bed for every app.

The unmodified official ``cytomine-python-client`` talks to it over HTTP, as to a real core
(like moto for AWS). Structure (moto's shape): :mod:`.backends` (one backend per domain over
one SQLite database: the domain rules), :mod:`.api` (the URL table, thin per-domain handlers,
the JSON serialisers, who may do what), :mod:`.app` (:class:`LocalCytomine`), :mod:`.imaging`
(crops and windows), :mod:`.importers` (folders of images with GeoJSON / CSV / Pascal VOC
annotations), :mod:`.descriptors` and :mod:`.launcher` (software from descriptors, jobs run as
subprocesses or containers), :mod:`.testing` (fixtures for app tests), :mod:`.cli`
(``mtdp server``). See ``docs/local_server.md``.

The server imports nothing from the rest of ``mtdp_core`` but :mod:`mtdp_core.errors`.
"""

from mtdp_core.server.api import Services, create_app
from mtdp_core.server.app import LocalCytomine
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.config import ServerConfig

__all__ = ["CytomineStore", "LocalCytomine", "ServerConfig", "Services", "create_app"]
