"""Running the apps in tests: job statuses, fast settings, parameters as a command line."""

from __future__ import annotations

from tests.helpers.scripts import descriptors

#: The apps (workflows/<app>/run.py) and the loader of their run.py as a module.
APPS = descriptors.APPS
load_workflow = descriptors.load_workflow

JOB_CLASS = "be.cytomine.processing.Job"
SUCCESS, FAILED = 3, 4
#: Tiny and fast: a random ResNet18 on 32-pixel crops (the apps' logic, not the model, is tested).
FAST = {
    "backbone": "resnet18",
    "weights": "random",
    "image_size": 32,
    "crop_max_size": 32,
    "batch_size": 8,
    "n_workers": 0,
}


def as_argv(params: dict) -> list[str]:
    """``{"cv_folds": 3, "balanced_classes": True}`` -> ``["--cv_folds", "3", "--balanced_classes", "true"]``."""
    argv = []
    for key, value in params.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        argv += [f"--{key}", str(value)]
    return argv
