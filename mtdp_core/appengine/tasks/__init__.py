"""The App Engine tasks: one module per task, each defining ``TASK`` (a ``TaskDefinition``).

==================  ===========================================================  ==================
task                what it does                                                 legacy app
==================  ===========================================================  ==================
classify            an annotation's crop or a whole slide + a model -> regions    svm-predict (and
                    with class names and probabilities (an annotation layer),     the slide app)
                    a summary, an overlay picture
train               labelled examples -> linear SVM on deep features (the          svm-train
                    paper's protocol) -> model file, CV score, confusion matrix
finetune            labelled examples -> fine-tuned network -> model file,         finetune-predict
                    validation score, confusion matrix                            (its training part)
extract_features    images -> a file of deep features (numpy, no pickle)          extract-features
==================  ===========================================================  ==================

Modules are imported when a task is asked for (``get_task``), so listing tasks is cheap.
"""

from __future__ import annotations

import importlib

from mtdp_core.appengine.spec import TaskDefinition
from mtdp_core.errors import UnknownNameError

#: Every task: name -> the module that defines its ``TASK``.
TASKS: dict[str, str] = {
    "classify": "mtdp_core.appengine.tasks.classify",
    "train": "mtdp_core.appengine.tasks.train",
    "finetune": "mtdp_core.appengine.tasks.finetune",
    "extract_features": "mtdp_core.appengine.tasks.extract_features",
}


def list_tasks() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> TaskDefinition:
    """The task called ``name`` (``classify``, ``train``, ``finetune``, ``extract_features``)."""
    key = name.replace("-", "_")
    if key not in TASKS:
        raise UnknownNameError(f"Unknown task {name!r}: use one of {', '.join(TASKS)}.")
    task = importlib.import_module(TASKS[key]).TASK
    if task.name != key:
        raise RuntimeError(f"{TASKS[key]} defines task {task.name!r}, registered as {key!r}")
    return task


def all_tasks() -> list[TaskDefinition]:
    return [get_task(name) for name in TASKS]
