"""Cytomine and BIAFLOWS: annotations and crops in, predictions out, and the job around them.

The only package of mtdp_core that imports the ``cytomine`` client.

- ``client``: the connection (official client + retries, timeouts, typed errors);
- ``annotations``: listing with filters, typed records, training labels;
- ``crops``: concurrent, retried, cached crop downloads;
- ``push``: predictions back to Cytomine, in bulk, idempotent;
- ``models``: the model file attached to a training job;
- ``job``: running an app as a Cytomine job or locally (BIAFLOWS ``--local``);
- ``params`` / ``inputs``: app parameters, the source of the descriptors;
- ``biaflows``: BIAFLOWS flags and local folders; ``report``: metrics and reports;
- ``apps``: the pipelines of the four apps.
"""
