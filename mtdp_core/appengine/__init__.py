"""The App Engine front end: the apps as tasks of the current Cytomine (CE 2025.1 and later).

Cytomine Community Edition runs algorithms as App Engine tasks: a zip of ``descriptor.yml`` and a
``docker save`` image, inputs and outputs as files under ``/inputs`` and ``/outputs``, no
credentials, geometry outputs turned into annotation layers. This package is that front end, beside
the legacy job front end (``mtdp_core.cytomine``, for Cytomine-ULiège and BIAFLOWS); both run the
same pipelines with the same parameter definitions.

- ``spec``: tasks, their descriptors (generated), and the descriptor checks (schema + server rules);
- ``files``: reading ``/inputs``, writing ``/outputs``, checking outputs as the App Engine does;
- ``geometry``: GeoJSON and the two coordinate systems (image: top-left; Cytomine: bottom-left);
- ``tasks``: the tasks (classify, train, finetune, extract_features), one module each;
- ``runner``: the entrypoint, ``python -m mtdp_core.appengine TASK``;
- ``local``: the local App Engine (``mtdp appengine run``): provision, run, check, show;
- ``bundle``: the uploadable zip (``mtdp appengine bundle``) and its checks.

See docs/appengine.md.
"""
