"""Task pools on disk: many small classification tasks, each with train/val/test splits.

A *pool* is a folder with one sub-folder per *task* (see docs/task_pools.md)::

    pool/
      pool.json              optional index: task order and metadata (one file to read at start-up)
      oral_cancer/
        task.json            classes, metric, group kind, where the images are (``root``)
        samples.tsv          path  split  label  group   (one row per image)
      my_task/               or the class-folder layout, no manifest needed:
        train/<class>/*.png  val/<class>/...  test/<class>/...

Loading is lazy: ``load_pool`` reads ``pool.json`` (or lists the task folders); a task's
``task.json`` is read when its metadata is first needed, and its ``samples.tsv`` (or class
folders) when its samples are first asked for. No image is opened. A pool of thousands of
tasks therefore loads in the time it takes to read one JSON file.

>>> pool = load_pool("pools/shared")
>>> task = pool["herlev_papsmear"]
>>> task.classes, task.metric, task.group_kind
>>> s = task.samples("train")            # s.paths, s.labels (int64), s.groups (str or None)
>>> pool.subset(exclude=["bccd"])        # leave-one-task-out
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mtdp_core.data.images import IMAGE_EXTENSIONS
from mtdp_core.errors import ConfigurationError, DataError, UnknownNameError

logger = logging.getLogger(__name__)

POOL_FORMAT = "mtdp.pool"
TASK_FORMAT = "mtdp.task"
FORMAT_VERSION = 1
POOL_INDEX = "pool.json"
TASK_FILE = "task.json"
SAMPLES_FILE = "samples.tsv"
SAMPLES_COLUMNS = ("path", "split", "label", "group")

SPLITS: tuple[str, ...] = ("train", "val", "test")
METRICS: tuple[str, ...] = ("accuracy", "roc_auc")
GROUP_KINDS: tuple[str, ...] = ("patient", "slide", "image", "none")
_ALL = "all"


def default_metric(n_classes: int) -> str:
    """The paper's choice: ROC AUC for binary tasks, accuracy for multi-class ones."""
    return "roc_auc" if n_classes == 2 else "accuracy"


@dataclass(frozen=True)
class TaskSamples:
    """The samples of one task in one or more splits.

    Attributes:
        paths: absolute image paths, (n,).
        labels: int64 class indices into ``classes``, (n,).
        groups: group id of each sample (patient, slide or image; str), or None when the task
            has no groups.
        classes: class names, in label order.
        splits: split name of each sample, (n,).
    """

    paths: list[Path]
    labels: np.ndarray
    groups: np.ndarray | None
    classes: tuple[str, ...]
    splits: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


@dataclass(frozen=True)
class TaskInfo:
    """The metadata of a task (``task.json``).

    Attributes:
        name: task name; also the name of its head in a multi-task model.
        classes: class names; a label's index in this tuple is its class index.
        metric: ``"accuracy"`` or ``"roc_auc"`` (default: ROC AUC for binary tasks).
        group_kind: what the group ids are: ``"patient"``, ``"slide"``, ``"image"`` or ``"none"``.
        root: folder that sample paths are relative to, relative to the task folder (or absolute).
        group_pattern: class-folder layout only: a regex whose first group, applied to a file
            name, gives the sample's group id (e.g. ``"^([^_]+)_"``).
        counts: number of samples per split, when known (filled in by ``write_task``).
    """

    name: str
    classes: tuple[str, ...]
    metric: str
    group_kind: str = "none"
    description: str = ""
    source: str = ""
    root: str = "."
    group_pattern: str | None = None
    counts: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        _check_task_name(self.name)
        if len(self.classes) < 2:
            raise DataError(
                f"Task {self.name!r} has {len(self.classes)} class(es) {list(self.classes)}: a task needs at least 2."
            )
        if len(set(self.classes)) != len(self.classes):
            raise DataError(
                f"Task {self.name!r} lists a class twice in {list(self.classes)}: class names must be unique."
            )
        if self.metric not in METRICS:
            raise DataError(f"Task {self.name!r} has unknown metric {self.metric!r}: use one of {', '.join(METRICS)}.")
        if self.metric == "roc_auc" and len(self.classes) != 2:
            raise DataError(
                f"Task {self.name!r} asks for roc_auc with {len(self.classes)} classes: ROC AUC needs a binary task; "
                "use accuracy."
            )
        if self.group_kind not in GROUP_KINDS:
            raise DataError(
                f"Task {self.name!r} has unknown group_kind {self.group_kind!r}: use one of {', '.join(GROUP_KINDS)}."
            )

    def to_dict(self) -> dict:
        out = {
            "format": TASK_FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "classes": list(self.classes),
            "metric": self.metric,
            "group_kind": self.group_kind,
            "description": self.description,
            "source": self.source,
            "root": self.root,
            "counts": dict(self.counts),
        }
        if self.group_pattern:
            out["group_pattern"] = self.group_pattern
        return out

    @classmethod
    def from_dict(cls, data: Mapping, *, where: str = "task.json") -> TaskInfo:
        if data.get("format", TASK_FORMAT) != TASK_FORMAT:
            raise DataError(f"{where} has format {data.get('format')!r}, not {TASK_FORMAT!r}: is it an mtdp task file?")
        if int(data.get("format_version", 1)) > FORMAT_VERSION:
            raise DataError(
                f"{where} has task format version {data.get('format_version')}; this mtdp reads {FORMAT_VERSION}: "
                "upgrade mtdp."
            )
        try:
            classes = tuple(data["classes"])
            name = str(data["name"])
        except KeyError as exc:
            raise DataError(
                f"{where} lacks the required key {exc.args[0]!r} (name and classes are required)."
            ) from None
        return cls(
            name=name,
            classes=classes,
            metric=str(data.get("metric") or default_metric(len(classes))),
            group_kind=str(data.get("group_kind", "none")),
            description=str(data.get("description", "")),
            source=str(data.get("source", "")),
            root=str(data.get("root", ".")),
            group_pattern=data.get("group_pattern"),
            counts={str(k): int(v) for k, v in dict(data.get("counts", {})).items()},
        )


_RESERVED = frozenset(dir(__import__("torch").nn.ModuleDict))


def _check_task_name(name: str) -> None:
    # Task names become module names of the heads (heads.<name>.weight), so they must be valid
    # nn.ModuleDict keys, and tab/newline-free for the manifests.
    if not name or "." in name or any(c in name for c in "\t\n\r/\\") or name in _RESERVED:
        raise DataError(
            f"Invalid task name {name!r}: use a non-empty name without '.', '/', tabs or newlines, "
            "that is not a torch.nn.ModuleDict attribute (e.g. rename the task folder)."
        )


@dataclass
class _Table:
    paths: list[str]  # relative to the task's root
    splits: np.ndarray  # str
    labels: np.ndarray  # str class names
    groups: np.ndarray | None  # str, or None


class Task:
    """One classification task of a pool; metadata and samples are read on first use."""

    def __init__(self, folder: str | os.PathLike, info: TaskInfo | None = None) -> None:
        self.folder = Path(folder)
        self._info = info
        self._table: _Table | None = None

    # ---------------------------------------------------------------- metadata
    @property
    def info(self) -> TaskInfo:
        if self._info is None:
            self._info = self._read_info()
        return self._info

    @property
    def name(self) -> str:
        return self._info.name if self._info is not None else self.folder.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def n_classes(self) -> int:
        return len(self.info.classes)

    @property
    def metric(self) -> str:
        return self.info.metric

    @property
    def group_kind(self) -> str:
        return self.info.group_kind

    @property
    def has_groups(self) -> bool:
        return self.info.group_kind != "none"

    @property
    def root(self) -> Path:
        root = Path(self.info.root)
        return root if root.is_absolute() else Path(os.path.normpath(self.folder / root))

    @property
    def layout(self) -> str:
        """``"manifest"`` (samples.tsv) or ``"folders"`` (split/class folders)."""
        return "manifest" if (self.folder / SAMPLES_FILE).is_file() else "folders"

    def __repr__(self) -> str:
        return f"Task({self.name!r}, folder={str(self.folder)!r})"

    # ---------------------------------------------------------------- samples
    def samples(self, split: str | Sequence[str] = "train") -> TaskSamples:
        """Samples of one split (``"train"``, ``"val"``, ``"test"``), several, or ``"all"``."""
        wanted = self._resolve_splits(split)
        table = self._load_table()
        mask = np.isin(table.splits, wanted)
        index = np.flatnonzero(mask)
        class_index = {c: i for i, c in enumerate(self.classes)}
        root = self.root
        return TaskSamples(
            paths=[root / table.paths[i] for i in index],
            labels=np.array([class_index[c] for c in table.labels[index]], dtype=np.int64),
            groups=None if table.groups is None else table.groups[index],
            classes=self.classes,
            splits=table.splits[index],
        )

    def n_samples(self, split: str | Sequence[str] = "train") -> int:
        wanted = self._resolve_splits(split)
        counts = self.info.counts
        if counts and self._table is None:
            return int(sum(counts.get(s, 0) for s in wanted))
        return int(np.isin(self._load_table().splits, wanted).sum())

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that have samples, in train/val/test order."""
        counts = self.info.counts if self._table is None and self.info.counts else self.split_counts()
        return tuple(s for s in SPLITS if counts.get(s, 0) > 0)

    def split_counts(self) -> dict[str, int]:
        splits = self._load_table().splits
        return {s: int((splits == s).sum()) for s in SPLITS}

    def _resolve_splits(self, split: str | Sequence[str]) -> list[str]:
        names = [split] if isinstance(split, str) else list(split)
        if _ALL in names:
            return list(SPLITS)
        bad = [s for s in names if s not in SPLITS]
        if bad or not names:
            raise ConfigurationError(
                f"Unknown split {bad or names!r} for task {self.name!r}: use train, val, test or all."
            )
        return names

    def check_files(self) -> list[Path]:
        """Paths of the samples whose image file is missing (empty when all are there)."""
        table = self._load_table()
        root = self.root
        return [root / p for p in table.paths if not (root / p).is_file()]

    # ---------------------------------------------------------------- reading
    def _read_info(self) -> TaskInfo:
        path = self.folder / TASK_FILE
        if path.is_file():
            return TaskInfo.from_dict(_read_json(path), where=str(path))
        if self.layout == "manifest":
            raise DataError(
                f"Task folder {self.folder} has a {SAMPLES_FILE} but no {TASK_FILE}: add one (see docs/task_pools.md)."
            )
        # Class-folder layout without task.json: everything comes from the folder names.
        classes = sorted(
            {p.name for s in SPLITS if (self.folder / s).is_dir() for p in (self.folder / s).iterdir() if p.is_dir()}
        )
        if not classes:
            raise DataError(
                f"Task folder {self.folder} has neither {TASK_FILE}/{SAMPLES_FILE} nor train/val/test class folders: "
                "see docs/task_pools.md for the two task layouts."
            )
        return TaskInfo(name=self.folder.name, classes=tuple(classes), metric=default_metric(len(classes)))

    def _load_table(self) -> _Table:
        if self._table is None:
            self._table = self._read_manifest() if self.layout == "manifest" else self._scan_folders()
            unknown = sorted(set(self._table.labels.tolist()) - set(self.classes))
            if unknown:
                raise DataError(
                    f"Task {self.name!r} has samples labelled {unknown[:5]} that are not among its classes "
                    f"{list(self.classes)}: fix {TASK_FILE} or the labels."
                )
        return self._table

    def _read_manifest(self) -> _Table:
        path = self.folder / SAMPLES_FILE
        paths, splits, labels, groups = [], [], [], []
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:3]] != list(SAMPLES_COLUMNS[:3]):
                raise DataError(
                    f"{path} must start with the header 'path<TAB>split<TAB>label[<TAB>group]', got {header!r}."
                )
            has_group = len(header) > 3 and header[3].strip() == "group"
            for line_no, row in enumerate(reader, start=2):
                if not row or not row[0]:
                    continue
                if len(row) < 3:
                    raise DataError(f"{path}:{line_no}: expected path, split, label (tab-separated), got {row!r}.")
                if row[1] not in SPLITS:
                    raise DataError(f"{path}:{line_no}: unknown split {row[1]!r}: use train, val or test.")
                paths.append(row[0])
                splits.append(row[1])
                labels.append(row[2])
                groups.append(row[3] if has_group and len(row) > 3 else "")
        has_groups = self.info.group_kind != "none"
        if has_groups and any(g == "" for g in groups):
            raise DataError(
                f"{path}: task {self.name!r} has group_kind {self.info.group_kind!r} but some rows have no group id."
            )
        return _Table(
            paths,
            np.array(splits, dtype=str),
            np.array(labels, dtype=str),
            np.array(groups, dtype=str) if has_groups else None,
        )

    def _scan_folders(self) -> _Table:
        if not any((self.folder / s).is_dir() for s in SPLITS):
            raise DataError(
                f"Task folder {self.folder} has neither {SAMPLES_FILE} nor train/val/test class folders: "
                "restore it or rebuild the pool (see docs/task_pools.md)."
            )
        pattern = re.compile(self.info.group_pattern) if self.info.group_pattern else None
        paths, splits, labels, groups = [], [], [], []
        for split in SPLITS:
            for class_dir in sorted(p for p in (self.folder / split).glob("*") if p.is_dir()):
                for image in sorted(class_dir.rglob("*")):
                    if image.suffix.lower() not in IMAGE_EXTENSIONS or not image.is_file():
                        continue
                    paths.append(str(image.relative_to(self.folder)))
                    splits.append(split)
                    labels.append(class_dir.name)
                    if pattern is not None:
                        match = pattern.search(image.name)
                        if not match:
                            raise DataError(
                                f"File name {image.name} does not match group_pattern {pattern.pattern!r} of task "
                                f"{self.name!r}."
                            )
                        groups.append(match.group(1) if match.groups() else match.group(0))
        if pattern is not None and self.info.group_kind == "none":
            raise DataError(
                f"Task {self.name!r} has a group_pattern but group_kind 'none': set group_kind to patient, slide or "
                "image."
            )
        return _Table(
            paths,
            np.array(splits, dtype=str),
            np.array(labels, dtype=str),
            np.array(groups, dtype=str) if pattern else None,
        )


class TaskPool:
    """An ordered set of tasks; the order is the task index used by samplers and models."""

    def __init__(
        self, tasks: Iterable[Task], *, path: Path | None = None, name: str = "", description: str = ""
    ) -> None:
        self.tasks: dict[str, Task] = {}
        for task in tasks:
            if task.name in self.tasks:
                raise DataError(
                    f"Task name {task.name!r} appears twice in pool {path or name}: task names must be unique."
                )
            self.tasks[task.name] = task
        self.path = path
        self.name = name or (path.name if path else "")
        self.description = description

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks.values())

    def __contains__(self, name: object) -> bool:
        return name in self.tasks

    def __getitem__(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise _unknown_task(name, self.tasks) from None

    def __repr__(self) -> str:
        return f"TaskPool({self.name!r}, {len(self)} tasks)"

    def subset(self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> TaskPool:
        """The pool restricted to ``include`` (all by default) minus ``exclude``, in pool order."""
        for name in list(include or []) + list(exclude or []):
            if name not in self.tasks:
                raise _unknown_task(name, self.tasks)
        keep = [t for t in self if (include is None or t.name in include) and t.name not in set(exclude or [])]
        if not keep:
            raise ConfigurationError(
                f"No task left in pool {self.name!r} after include={include} exclude={exclude}: keep at least one."
            )
        return TaskPool(keep, path=self.path, name=self.name, description=self.description)

    def summary(self) -> list[dict]:
        """One row per task: name, classes, metric, group kind, samples per split."""
        rows = []
        for task in self:
            counts = task.info.counts or task.split_counts()
            rows.append(
                {
                    "name": task.name,
                    "n_classes": task.n_classes,
                    "classes": list(task.classes),
                    "metric": task.metric,
                    "group_kind": task.group_kind,
                    **{s: int(counts.get(s, 0)) for s in SPLITS},
                }
            )
        return rows


def _unknown_task(name: str, tasks: Mapping[str, Task]) -> UnknownNameError:
    close = difflib.get_close_matches(str(name), list(tasks), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownNameError(f"Unknown task {name!r}.{hint} Tasks in the pool: {', '.join(tasks)}.")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): fix or regenerate it.") from None
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}.") from None


def _is_task_folder(folder: Path) -> bool:
    return (
        (folder / TASK_FILE).is_file()
        or (folder / SAMPLES_FILE).is_file()
        or any((folder / s).is_dir() for s in SPLITS)
    )


def load_pool(path: str | os.PathLike) -> TaskPool:
    """Open a pool folder. Reads ``pool.json`` when present, otherwise lists the task folders."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"Task pool {path} does not exist: build one with `mtdp pool build` or see docs/task_pools.md.")
    index_path = path / POOL_INDEX
    if index_path.is_file():
        index = _read_json(index_path)
        if index.get("format") != POOL_FORMAT:
            raise DataError(f"{index_path} has format {index.get('format')!r}, not {POOL_FORMAT!r}.")
        if int(index.get("format_version", 1)) > FORMAT_VERSION:
            raise DataError(
                f"{index_path} has pool format version {index.get('format_version')}; this mtdp reads "
                f"{FORMAT_VERSION}: upgrade mtdp."
            )
        tasks = []
        for entry in index.get("tasks", []):
            folder = path / entry.get("folder", entry["name"])
            info = (
                TaskInfo.from_dict(entry["info"], where=f"{index_path} ({entry['name']})") if "info" in entry else None
            )
            tasks.append(Task(folder, info))
        return TaskPool(
            tasks, path=path, name=str(index.get("name", path.name)), description=str(index.get("description", ""))
        )
    if _is_task_folder(path) and not any(_is_task_folder(p) for p in path.iterdir() if p.is_dir()):
        raise DataError(
            f"{path} is a task folder, not a pool: give its parent folder, which holds one folder per task."
        )
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_task_folder(p))
    if not folders:
        raise DataError(
            f"Task pool {path} holds no task folder (with {TASK_FILE}, {SAMPLES_FILE} or train/ val/ test/)."
        )
    return TaskPool([Task(f) for f in folders], path=path)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class SampleRow:
    """One line of samples.tsv: path relative to the task's root, split, class name, group id."""

    path: str
    split: str
    label: str
    group: str = ""


def write_task(folder: str | os.PathLike, info: TaskInfo, rows: Sequence[SampleRow]) -> Task:
    """Write ``task.json`` and ``samples.tsv`` of a task; returns the Task.

    ``info.counts`` is recomputed from ``rows``. Rows are validated (known split and class,
    group id present when the task has groups, every class present in the training split).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classes = set(info.classes)
    for row in rows:
        if row.split not in SPLITS:
            raise DataError(f"Task {info.name!r}: sample {row.path} has split {row.split!r}; use train, val or test.")
        if row.label not in classes:
            raise DataError(
                f"Task {info.name!r}: sample {row.path} has label {row.label!r}, not among {sorted(classes)}."
            )
        if info.group_kind != "none" and not row.group:
            raise DataError(
                f"Task {info.name!r} has group_kind {info.group_kind!r} but sample {row.path} has no group id."
            )
        if any(c in f"{row.path}{row.label}{row.group}" for c in "\t\n\r"):
            raise DataError(
                f"Task {info.name!r}: sample {row.path!r} contains a tab or newline in its path, label or group."
            )
    missing = sorted(classes - {r.label for r in rows if r.split == "train"})
    if missing:
        raise DataError(
            f"Task {info.name!r} has no training sample of class(es) {missing}: every class needs training images."
        )
    counts = {s: sum(1 for r in rows if r.split == s) for s in SPLITS}
    info = replace(info, counts=counts)
    _atomic_write(folder / TASK_FILE, json.dumps(info.to_dict(), indent=2) + "\n")
    lines = ["\t".join(SAMPLES_COLUMNS)] + [f"{r.path}\t{r.split}\t{r.label}\t{r.group}" for r in rows]
    _atomic_write(folder / SAMPLES_FILE, "\n".join(lines) + "\n")
    return Task(folder, info)


def write_pool_index(
    path: str | os.PathLike, tasks: Sequence[Task] | None = None, *, name: str = "", description: str = ""
) -> Path:
    """Write ``pool.json``: the task order and every task's metadata, so loading reads one file.

    Without ``tasks``, indexes the task folders found in ``path`` (sorted by name).
    """
    path = Path(path)
    if tasks is None:
        tasks = [
            Task(p)
            for p in sorted(
                q for q in path.iterdir() if q.is_dir() and not q.name.startswith(".") and _is_task_folder(q)
            )
        ]
    entries = []
    for task in tasks:
        info = task.info
        if not info.counts:
            info = replace(info, counts=task.split_counts())
        entries.append({"name": task.name, "folder": os.path.relpath(task.folder, path), "info": info.to_dict()})
    index = {
        "format": POOL_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or path.name,
        "description": description,
        "tasks": entries,
    }
    _atomic_write(path / POOL_INDEX, json.dumps(index, indent=2) + "\n")
    return path / POOL_INDEX


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- splits


def holdout_mask(labels: np.ndarray, groups: np.ndarray | None, fraction: float, *, seed: int) -> np.ndarray:
    """Choose about ``fraction`` of the samples to hold out, stratified by label, grouped if possible.

    With groups, no group is split between the held-out part and the rest
    (sklearn's StratifiedGroupKFold, one fold of round(1/fraction)); without, each class
    gives round(fraction * n_class) samples, keeping at least one in the rest. Seeded.

    Returns: bool array (n,), True for held-out samples.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0.0 < fraction < 1.0:
        raise ConfigurationError(f"Invalid hold-out fraction {fraction!r}: use a number between 0 and 1 (e.g. 0.2).")
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    if groups is None:
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            take = min(int(round(fraction * len(members))), len(members) - 1)
            if take > 0:
                mask[rng.permutation(members)[:take]] = True
        return mask
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    n_splits = max(2, int(round(1.0 / fraction)))
    if n_groups < 2:
        raise DataError(
            f"Cannot hold out a grouped split: all {n} samples share one group ({groups[0]!r}); give more groups or "
            "no groups."
        )
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    if n_groups >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, held = next(splitter.split(np.zeros(n), labels, groups))
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        _, held = next(splitter.split(np.zeros(n), labels, groups))
    mask[held] = True
    return mask


def assign_splits(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    splits: np.ndarray | None = None,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """Complete the train/val/test assignment of a task's samples.

    ``splits`` holds the existing assignment ("" where there is none). Existing splits are
    kept; when no sample has a split, ``test_fraction`` of them become test; when there is no
    validation split, ``val_fraction`` of the training samples become val (stratified, grouped
    when ``groups`` is given, seeded). ``val_fraction=0`` keeps no validation split.

    Returns: str array (n,) of "train", "val" or "test".
    """
    labels = np.asarray(labels)
    n = len(labels)
    out = np.array([""] * n, dtype=object) if splits is None else np.asarray(splits, dtype=object).copy()
    if np.any((out != "") & ~np.isin(out, SPLITS)):
        raise DataError(
            f"Unknown split names {sorted(set(out[(out != '') & ~np.isin(out, SPLITS)]))}: use train, val or test."
        )
    if np.all(out == ""):
        out[:] = "train"
        if test_fraction > 0:
            held = holdout_mask(labels, groups, test_fraction, seed=seed)
            out[held] = "test"
    else:
        out[out == ""] = "train"
    if val_fraction > 0 and not np.any(out == "val"):
        train = np.flatnonzero(out == "train")
        held = holdout_mask(
            labels[train], None if groups is None else np.asarray(groups)[train], val_fraction, seed=seed + 1
        )
        out[train[held]] = "val"
    return out.astype(str)
