"""The pipelines of the four apps (``workflows/<app>/run.py`` parse, then call ``run(job, args)``)."""
