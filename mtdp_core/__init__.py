"""mtdp_core: multi-task pre-training of deep neural networks for digital pathology.

The library behind the ``mtdp`` command and the Cytomine / BIAFLOWS apps in ``workflows/``.
Sub-packages: ``backbones`` (registry, weights), ``data`` (images, task pools, sampler),
and, as they land, the multi-task trainer, transfer, evaluation, Cytomine I/O and the
local Cytomine-compatible server.
"""

__version__ = "0.1.0"
