import numpy as np
import pytest
import torch

from mtdp_core.backbones import create_backbone
from mtdp_core.errors import ConfigurationError
from mtdp_core.transfer.finetune import FineTuner

TINY = dict(
    backbone="resnet18",
    weights="random",
    image_size=32,
    epochs=2,
    batch_size=8,
    learning_rates=(1e-2, 1e-4),
    num_workers=0,
    device="cpu",
)


def test_fine_tuning_from_scratch_learns_a_tiny_task_and_keeps_its_best_epoch(colour_splits):
    from mtdp_core.transfer.finetune import predict_logits

    (train, y_train), (val, y_val), (test, y_test) = (colour_splits[s] for s in ("train", "val", "test"))
    tuner = FineTuner(**TINY).fit(train, y_train, X_val=val, y_val=y_val)
    # Better than chance (0.5) on images it never saw, by a wide margin: the selection metric
    # (ROC AUC, binary task) and accuracy.
    assert tuner.scoring_ == "roc_auc" and tuner.score(test, y_test) >= 0.9
    accuracy = (tuner.predict(test) == np.array(y_test)).mean()
    assert accuracy >= 0.75, accuracy
    assert list(tuner.classes_) == ["blue", "red"]
    proba = tuner.predict_proba(test)
    assert proba.shape == (12, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    # Every (lr, epoch) was run and the kept one is the best on validation...
    assert [(h["lr"], h["epoch"]) for h in tuner.history_] == [(lr, e) for lr in (1e-2, 1e-4) for e in (1, 2)]
    best = max(tuner.history_, key=lambda h: (h["val_score"], -h["val_loss"]))
    assert (tuner.best_lr_, tuner.best_epoch_) == (best["lr"], best["epoch"])
    # ... and the network kept is that epoch's: its validation loss is the one recorded.
    logits = predict_logits(tuner.network_, val, tuner.preprocessing_, num_workers=0, device="cpu")
    targets = torch.tensor([["blue", "red"].index(v) for v in y_val])
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), targets))
    assert loss == pytest.approx(best["val_loss"], rel=1e-4)


def test_early_stopping_and_a_held_out_validation_split(colour_splits):
    train, y_train = colour_splits["train"]
    groups = [p.name.split("_")[0] for p in train]  # img00..img07: each group holds one red and one blue
    tuner = FineTuner(**{**TINY, "learning_rates": (1e-7,), "epochs": 4, "patience": 1, "val_fraction": 0.25})
    tuner.fit(train, y_train, groups=groups)
    assert len(tuner.history_) < 4  # a learning rate this small stops improving at once
    assert tuner.best_epoch_ >= 1


def test_on_epoch_sees_every_history_row_as_it_ends(colour_splits):
    train, y_train = colour_splits["train"]
    rows = []
    tuner = FineTuner(**{**TINY, "learning_rates": (1e-3, 1e-4), "epochs": 2, "on_epoch": rows.append})
    tuner.fit(train, y_train)
    assert rows == tuner.history_ and [(r["lr"], r["epoch"]) for r in rows] == [
        (1e-3, 1),
        (1e-3, 2),
        (1e-4, 1),
        (1e-4, 2),
    ]


def test_pretrained_initial_weights_are_used(colour_splits, tmp_path):
    from mtdp_core.backbones import save_backbone

    source = create_backbone("resnet18", weights="random", seed=7)
    ckpt = save_backbone(source, tmp_path / "init.pth")
    (train, y_train), (val, y_val) = colour_splits["train"], colour_splits["val"]
    tuner = FineTuner(**{**TINY, "weights": str(ckpt), "learning_rates": (1e-9,), "epochs": 1, "augment": False})
    tuner.fit(train, y_train, X_val=val, y_val=y_val)
    assert tuner.backbone_identity_["weights"]["source"] == "file"
    # With a negligible learning rate the backbone is still the initial one (BN statistics aside).
    trained = tuner.network_.backbone.state_dict()
    conv = "conv1.weight"
    torch.testing.assert_close(trained[conv], source.state_dict()[conv], atol=1e-6, rtol=0)
    exported = tuner.export_backbone(tmp_path / "ft.pth")
    reloaded = create_backbone("resnet18", weights=str(exported))
    torch.testing.assert_close(reloaded.state_dict()[conv], trained[conv])


def test_bad_settings_are_clear_errors(colour_splits):
    train, y_train = colour_splits["train"]
    with pytest.raises(ConfigurationError, match="learning_rates"):
        FineTuner(**{**TINY, "learning_rates": ()}).fit(train, y_train)
    with pytest.raises(ConfigurationError, match="optimizer"):
        FineTuner(**{**TINY, "optimizer": "lion"}).fit(train, y_train)
    with pytest.raises(ConfigurationError, match="one label per image"):
        FineTuner(**TINY).fit(train, y_train[:-1])
    with pytest.raises(ConfigurationError, match="Only one class"):
        FineTuner(**TINY).fit(train[:4], ["red"] * 4, X_val=train[4:6], y_val=["red"] * 2)
