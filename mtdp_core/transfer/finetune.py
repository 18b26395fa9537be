"""Fine-tuning: the backbone plus a new linear layer, trained on the target task.

The paper's protocol (Mormont et al. 2020, Section IV-C): the pre-trained backbone, a new
fully connected layer and a softmax, trained for 100 epochs with the paper's augmentation
(random square crop of non-square images, random horizontal and vertical flips); the
learning rate is chosen in {1e-3, 1e-4, 1e-5, 1e-6} on a validation set, and the best epoch
(on the same set) is kept. Training from scratch is the same code with
``weights="random"``.

``FineTuner`` is a scikit-learn classifier over images (paths, PIL images or arrays). Each
learning rate restarts from the same initial weights and the same seed; the network of
the best (learning rate, epoch) on the validation set is kept. Ties on the validation
score (frequent with ROC AUC) go to the lower validation loss. CUDA runs use
channels_last tensors and mixed precision (``runtime.resolve_precision``: bf16 where
supported, else fp16 with loss scaling); CPU runs stay in float32 and contiguous (channels_last slows CPU training).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from tqdm.auto import tqdm

from mtdp_core.backbones import Backbone, create_backbone, get_backbone_entry, save_backbone
from mtdp_core.data.images import RESIZE_MODES, Preprocessing, TrainAugmentation
from mtdp_core.errors import ConfigurationError, ModelFileError
from mtdp_core.runtime import Precision, describe_device, resolve_device, resolve_precision
from mtdp_core.transfer.features import (
    as_input_list,
    default_batch_size,
    default_num_workers,
    make_loader,
    run_extraction,
)
from mtdp_core.transfer.probes import holdout_split, resolve_scoring, score_from_decisions

logger = logging.getLogger(__name__)

PAPER_LEARNING_RATES: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


class FineTunedNetwork(nn.Module):
    """A backbone and a linear classification layer: (B, 3, H, W) -> logits (B, n_classes)."""

    def __init__(self, backbone: Backbone, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.n_features, n_classes)
        self.arch = backbone.arch
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def network_from_state(arch: str, n_classes: int, state: dict[str, np.ndarray]) -> FineTunedNetwork:
    """Rebuild a FineTunedNetwork from numeric arrays (a saved model's ``net.*`` entries)."""
    entry = get_backbone_entry(arch)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        network = FineTunedNetwork(entry.builder(), n_classes)
    expected = network.state_dict()
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise ModelFileError(
            f"The saved network does not fit {arch} with {n_classes} classes ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} misshapen tensors, e.g. {example!r}): the file is damaged."
        )
    network.load_state_dict(tensors, strict=True, assign=True)
    return network.eval()


def predict_logits(
    network: nn.Module,
    inputs: Any,
    preprocessing: Preprocessing,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    progress: bool = False,
    loader: torch.utils.data.DataLoader | None = None,
) -> np.ndarray:
    """Logits of images: float32 (n, n_classes), with the same fast loader as feature extraction
    (``loader``: a ``features.make_loader`` loader of these inputs to reuse)."""
    items = as_input_list(inputs)
    device = resolve_device(device)
    workers = default_num_workers(device) if num_workers is None else num_workers
    batch_size = batch_size or default_batch_size(device, preprocessing.size)
    out = np.empty((len(items), network.head.out_features), dtype=np.float32)

    def sink(index: np.ndarray, rows: np.ndarray) -> None:
        out[index] = rows

    model = network.to(device).eval().to(memory_format=torch.channels_last)
    run_extraction(
        model,
        preprocessing,
        items,
        range(len(items)),
        sink,
        device=device,
        batch_size=batch_size,
        num_workers=workers,
        amp=amp,
        progress=progress,
        loader=loader,
    )
    return out


class _TrainSet(torch.utils.data.Dataset):
    """(augmented uint8 image, label index) pairs; augmentation randomness from torch's RNG,
    which the DataLoader seeds per worker from its generator (reproducible runs)."""

    def __init__(
        self,
        inputs: Sequence,
        targets: np.ndarray,
        augmentation: TrainAugmentation | None,
        preprocessing: Preprocessing,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.augmentation, self.preprocessing = augmentation, preprocessing

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.inputs[index]
        if isinstance(item, np.ndarray):
            from PIL import Image

            item = Image.fromarray(item)
        x = self.augmentation.load(item) if self.augmentation else self.preprocessing.load(item)
        return x, int(self.targets[index])


class FineTuner(ClassifierMixin, BaseEstimator):
    """Fine-tune a backbone + new linear layer on labelled images (scikit-learn classifier).

    Parameters:
        backbone, weights, seed, sha256: as ``create_backbone`` (``weights="random"``: training
            from scratch, the paper's baseline).
        image_size, resize: input size and resize mode (``"center_crop"``/``"stretch"``).
        learning_rates: the grid (paper: 1e-3, 1e-4, 1e-5, 1e-6); each restarts from the
            initial weights; the best on the validation set is kept.
        epochs: epochs per learning rate (paper: 100).
        batch_size: images per step.
        optimizer: ``"sgd"`` (momentum ``momentum``) or ``"adam"``.
        weight_decay: L2 penalty.
        patience: stop a learning rate after this many epochs without improvement (None: never).
        val_fraction: share of the training set held out for validation when ``fit`` gets no
            ``X_val`` (split grouped by ``groups`` when given, stratified).
        augment: the paper's augmentation (random square crop, flips) on training images.
        scoring: validation metric: ``"auto"`` (ROC AUC if binary, else accuracy), ...
        num_workers, device, amp, progress: as feature extraction.
        on_epoch: called with each epoch's history row (lr, epoch, losses, val_score,
            seconds) as it ends, e.g. to report a Cytomine job's progress. Not a
            hyper-parameter: it does not change the result.

    Attributes (after fit):
        network_: the fine-tuned FineTunedNetwork (eval mode, CPU).
        classes_: labels; best_lr_, best_epoch_, best_score_: the kept network's.
        history_: one dict per (lr, epoch): train_loss, val_loss, val_score, seconds.
        validation_: the set that chose the learning rate and epoch: ``{"source": "given", "n"}``
            (``X_val``, e.g. the task's own validation split) or ``{"source": "holdout",
            "fraction", "n"}``.
        scoring_, preprocessing_, backbone_identity_ (the initial weights' identity).
    """

    def __init__(
        self,
        backbone: str = "densenet121",
        weights: str | None = "imagenet",
        *,
        seed: int = 0,
        sha256: str | None = None,
        image_size: int = 224,
        resize: str = "center_crop",
        learning_rates: Sequence[float] = PAPER_LEARNING_RATES,
        epochs: int = 100,
        batch_size: int = 32,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        patience: int | None = None,
        val_fraction: float = 0.2,
        augment: bool = True,
        scoring: str = "auto",
        num_workers: int | None = None,
        device: str = "auto",
        amp: bool = True,
        progress: bool = False,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.seed = seed
        self.sha256 = sha256
        self.image_size = image_size
        self.resize = resize
        self.learning_rates = learning_rates
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.patience = patience
        self.val_fraction = val_fraction
        self.augment = augment
        self.scoring = scoring
        self.num_workers = num_workers
        self.device = device
        self.amp = amp
        self.progress = progress
        self.on_epoch = on_epoch

    # ----------------------------------------------------------------- checks

    def _validate(self) -> None:
        get_backbone_entry(self.backbone)
        lrs = list(self.learning_rates)
        if not lrs or not all(isinstance(v, (int, float)) and v > 0 for v in lrs):
            raise ConfigurationError(
                f"Invalid learning_rates {self.learning_rates!r}: give positive numbers, e.g. 1e-3,1e-4."
            )
        for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 2)):
            if not isinstance(value, int) or value < low:
                raise ConfigurationError(f"Invalid {name} {value!r}: use an integer >= {low}.")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigurationError(f"Invalid optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}.")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ConfigurationError(
                f"Invalid patience {self.patience!r}: use None (no early stopping) or an integer >= 1."
            )
        if not 0 < float(self.val_fraction) < 1:
            raise ConfigurationError(f"Invalid val_fraction {self.val_fraction!r}: use a value in (0, 1), e.g. 0.2.")
        if self.resize not in RESIZE_MODES:
            raise ConfigurationError(f"Invalid resize {self.resize!r}: use one of {', '.join(RESIZE_MODES)}.")

    # ----------------------------------------------------------------- training

    def fit(self, X: Any, y: Any, groups: Any = None, X_val: Any = None, y_val: Any = None) -> FineTuner:
        """Fine-tune on images ``X`` with labels ``y``.

        Validation on (``X_val``, ``y_val``) when given, else on a held-out ``val_fraction``
        of X (grouped by ``groups``). Returns self.
        """
        self._validate()
        inputs, y = list(as_input_list(X)), np.asarray(y)
        if len(inputs) != len(y):
            raise ConfigurationError(f"Got {len(inputs)} images and {len(y)} labels: give one label per image.")
        if X_val is None:
            train_idx, val_idx = holdout_split(y, groups, self.val_fraction, seed=self.seed)
            train_inputs, y_train = [inputs[i] for i in train_idx], y[train_idx]
            val_inputs, y_val_arr = [inputs[i] for i in val_idx], y[val_idx]
            validation = {"source": "holdout", "fraction": float(self.val_fraction), "n": len(val_inputs)}
        else:
            train_inputs, y_train = inputs, y
            val_inputs, y_val_arr = list(as_input_list(X_val)), np.asarray(y_val)
            validation = {"source": "given", "n": len(val_inputs)}
        classes = np.unique(y)
        if len(classes) < 2:
            raise ConfigurationError("Only one class in the training images: fine-tuning needs at least two classes.")
        unknown = set(np.unique(y_val_arr).tolist()) - set(classes.tolist())
        if unknown:
            raise ConfigurationError(
                f"Validation labels {sorted(unknown)} are not in the training labels: check y_val."
            )
        if len(train_inputs) < 2:
            raise ConfigurationError(
                f"Only {len(train_inputs)} training image(s) after the validation split: add images."
            )
        scoring = resolve_scoring(self.scoring, len(classes))
        device = resolve_device(self.device)
        workers = default_num_workers(device) if self.num_workers is None else self.num_workers

        backbone = create_backbone(self.backbone, weights=self.weights, seed=self.seed, sha256=self.sha256)
        prep = Preprocessing.for_backbone(backbone, size=self.image_size, resize=self.resize)
        identity = backbone.identity()
        init_state = copy.deepcopy(backbone.state_dict())
        targets = np.searchsorted(classes, y_train)
        train_set = _TrainSet(train_inputs, targets, TrainAugmentation(prep) if self.augment else None, prep)
        val_targets = np.searchsorted(classes, y_val_arr)
        logger.info(
            "fine-tuning %s (%s) on %d images, validating on %d, %d classes, lr %s, %d epochs, on %s",
            self.backbone,
            backbone.weights_info.key(),
            len(train_inputs),
            len(val_inputs),
            len(classes),
            list(self.learning_rates),
            self.epochs,
            describe_device(device),
        )

        # Read every epoch: one loader whose workers live for the whole fit.
        val_batch = default_batch_size(device, self.image_size)
        val_loader = make_loader(
            val_inputs,
            prep,
            range(len(val_inputs)),
            device=device,
            batch_size=val_batch,
            num_workers=workers,
            persistent=True,
        )
        history: list[dict] = []
        best: dict = {"key": (-math.inf, -math.inf), "state": None, "lr": None, "epoch": None, "score": None}
        for lr in self.learning_rates:
            torch.manual_seed(self.seed)  # same head init, batches and augmentation for every lr
            backbone.load_state_dict(init_state)
            network = FineTunedNetwork(backbone, len(classes)).to(device)
            loader = torch.utils.data.DataLoader(
                train_set,
                batch_size=min(self.batch_size, len(train_set)),
                shuffle=True,
                drop_last=len(train_set) > self.batch_size,  # no size-1 batch for BatchNorm
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(self.seed),
            )
            if self.optimizer == "sgd":
                optimizer = torch.optim.SGD(
                    network.parameters(), lr=float(lr), momentum=self.momentum, weight_decay=self.weight_decay
                )
            else:
                optimizer = torch.optim.Adam(network.parameters(), lr=float(lr), weight_decay=self.weight_decay)
            precision = resolve_precision(self.amp, device)
            scaler = precision.grad_scaler()  # a pass-through unless fp16
            stale = 0
            lr_best = (-math.inf, -math.inf)
            for epoch in range(1, self.epochs + 1):
                start = time.perf_counter()
                train_loss = _train_epoch(
                    network,
                    loader,
                    prep,
                    device,
                    optimizer,
                    precision,
                    scaler,
                    desc=f"lr {lr:g} epoch {epoch}",
                    progress=self.progress,
                )
                val_logits = predict_logits(
                    network,
                    val_inputs,
                    prep,
                    batch_size=val_batch,
                    num_workers=workers,
                    device=device,
                    amp=self.amp,
                    loader=val_loader,
                )
                val_loss = float(
                    nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val_targets).long())
                )
                val_score = score_from_decisions(scoring, y_val_arr, softmax(val_logits), classes)
                history.append(
                    {
                        "lr": float(lr),
                        "epoch": epoch,
                        "train_loss": train_loss,
                        "val_loss": val_loss,
                        "val_score": val_score,
                        "seconds": time.perf_counter() - start,
                    }
                )
                if self.on_epoch is not None:
                    self.on_epoch(dict(history[-1]))
                logger.info(
                    "lr %g epoch %d/%d: train loss %.4f, val loss %.4f, val %s %.4f",
                    lr,
                    epoch,
                    self.epochs,
                    train_loss,
                    val_loss,
                    scoring,
                    val_score,
                )
                key = (-math.inf if math.isnan(val_score) else val_score, -val_loss)
                if key > best["key"]:
                    best = {
                        "key": key,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()},
                        "lr": float(lr),
                        "epoch": epoch,
                        "score": val_score,
                    }
                if key > lr_best:
                    lr_best, stale = key, 0
                else:
                    stale += 1
                    if self.patience is not None and stale >= self.patience:
                        logger.info("lr %g: no improvement for %d epochs, stopping", lr, stale)
                        break
            del loader  # ends its persistent workers
        del val_loader
        if best["state"] is None:
            raise ConfigurationError(
                f"Fine-tuning diverged (NaN validation loss) at every learning rate {list(self.learning_rates)}: "
                "use smaller learning rates."
            )

        network = FineTunedNetwork(backbone, len(classes))
        network.load_state_dict(best["state"])
        self.network_ = network.cpu().eval()
        self.classes_ = classes
        self.best_lr_, self.best_epoch_, self.best_score_ = best["lr"], best["epoch"], best["score"]
        self.history_ = history
        self.validation_ = validation
        self.scoring_ = scoring
        self.preprocessing_ = prep
        self.backbone_identity_ = identity
        logger.info(
            "fine-tuning: best lr %g, epoch %d, val %s %.4f", self.best_lr_, self.best_epoch_, scoring, self.best_score_
        )
        return self

    # ----------------------------------------------------------------- prediction

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of images: (n, n_classes)."""
        check_is_fitted(self)
        return softmax(
            predict_logits(
                self.network_, X, self.preprocessing_, num_workers=self.num_workers, device=self.device, amp=self.amp
            )
        )

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The validation metric (``scoring_``: ROC AUC for binary tasks, else accuracy) on (X, y)."""
        return score_from_decisions(self.scoring_, np.asarray(y), self.predict_proba(X), self.classes_)

    def training_summary(self) -> dict:
        """JSON-able summary of the training (saved with the model)."""
        check_is_fitted(self)
        return {
            "method": "finetune",
            "initial_weights": self.backbone_identity_.get("weights"),
            "learning_rates": [float(v) for v in self.learning_rates],
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "augment": self.augment,
            "scoring": self.scoring_,
            "validation": self.validation_,
            "best_lr": self.best_lr_,
            "best_epoch": self.best_epoch_,
            "best_val_score": self.best_score_,
            "history": self.history_,
        }

    def export_backbone(self, path: Any) -> Any:
        """Save the fine-tuned backbone alone, loadable with ``create_backbone(arch, weights=path)``
        (a weights-only torch file) for feature extraction."""
        check_is_fitted(self)
        return save_backbone(self.network_.backbone, path, metadata={"fine_tuned": self.training_summary()})


def _train_epoch(
    network: FineTunedNetwork,
    loader: torch.utils.data.DataLoader,
    prep: Preprocessing,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    scaler: torch.amp.GradScaler,
    *,
    desc: str,
    progress: bool,
) -> float:
    """One pass over the training set; returns the mean training loss."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    # Validation runs channels_last (faster inference everywhere): back to the training layout.
    network.to(memory_format=memory_format).train()
    total, count = 0.0, 0
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        # uint8 to the device, normalised there: 4x less to transfer than float images.
        x = prep.normalize(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
        t = targets.to(device, non_blocking=True)
        with precision.autocast():
            loss = nn.functional.cross_entropy(network(x), t)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(t)
        count += len(t)
    return total / max(count, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) logits, computed stably."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
