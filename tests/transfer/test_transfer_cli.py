import csv
import json

import numpy as np
import pytest

from mtdp_core.cli import main
from tests.helpers.images import colour_task

FAST = [
    "--backbone",
    "resnet18",
    "--weights",
    "random",
    "--size",
    "32",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture
def folders(tmp_path):
    colour_task(tmp_path / "train", 6, 0)
    colour_task(tmp_path / "test", 3, 500)
    return tmp_path / "train", tmp_path / "test"


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_features_probe_predict_from_the_command_line(folders, tmp_path, capsys, caplog):
    train, test = folders
    cache = str(tmp_path / "cache")
    for _ in range(2):
        assert (
            main(
                [
                    "features",
                    str(train),
                    "-o",
                    str(tmp_path / "train.npz"),
                    "--cache-dir",
                    cache,
                    "--groups",
                    r"img(\d+)",
                    *FAST,
                ]
            )
            == 0
        )
    assert "0 computed, 12 from cache" in caplog.text
    data = np.load(tmp_path / "train.npz")
    assert data["features"].shape == (12, 512) and set(data["labels"]) == {"red", "blue"}
    assert list(data["groups"][:2]) == ["00", "01"]
    assert main(["features", str(test), "-o", str(tmp_path / "test.npz"), *FAST]) == 0

    model = tmp_path / "model.npz"
    assert (
        main(
            [
                "probe",
                str(tmp_path / "train.npz"),
                "--test",
                str(tmp_path / "test.npz"),
                "-o",
                str(model),
                "--folds",
                "3",
                "--learning-curve",
                "0.5,1",
                "--curve-seeds",
                "0,1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3-fold stratified CV grouped by 6 groups" in out and "C=1e-10" in out and "<- best" in out
    assert "test roc_auc: 1.0000" in out and "learning curve 50%" in out
    assert len(_rows(tmp_path / "model-curve.csv")) == 4 and (tmp_path / "model-curve.png").is_file()

    assert (
        main(["predict", str(model), str(test), "-o", str(tmp_path / "pred.csv"), "--workers", "0", "--device", "cpu"])
        == 0
    )
    rows = _rows(tmp_path / "pred.csv")
    assert len(rows) == 6 and all(r["label"] == r["path"].split("/")[-2] for r in rows)
    assert set(rows[0]) >= {"path", "label", "name", "term_id", "confidence", "score_blue", "score_red"}
    assert main(["predict", str(model), "--info"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["kind"] == "svm" and meta["backbone"]["arch"] == "resnet18" and meta["extra"]["test"]["score"] == 1.0


def test_probe_on_an_image_folder_with_another_kind(folders, tmp_path, capsys):
    train, test = folders
    assert (
        main(
            [
                "probe",
                str(train),
                "--test",
                str(test),
                "-o",
                str(tmp_path / "lr.npz"),
                "--kind",
                "logreg",
                "--grid",
                "C=0.1,1",
                "--folds",
                "2",
                *FAST,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "logreg on 12 samples" in out and "C=0.1" in out and "test roc_auc" in out
    assert main(["predict", str(tmp_path / "lr.npz"), str(test / "red"), "--workers", "0", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(",red," in line for line in lines[1:])


def test_finetune_then_predict(folders, tmp_path, capsys):
    train, test = folders
    model = tmp_path / "ft.npz"
    assert (
        main(
            [
                "finetune",
                str(train),
                "--test",
                str(test),
                "-o",
                str(model),
                "--epochs",
                "1",
                "--lrs",
                "0.01",
                "--batch-size",
                "6",
                "--groups",
                r"img(\d+)",
                "--val-fraction",
                "0.34",
                "--export-backbone",
                str(tmp_path / "ft_backbone.pth"),
                *FAST,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "best: lr 0.01, epoch 1" in out and "test roc_auc" in out
    assert len(_rows(tmp_path / "ft-history.csv")) == 1
    assert (
        main(
            [
                "features",
                str(test),
                "-o",
                str(tmp_path / "f.npz"),
                *FAST[:2],
                "--weights",
                str(tmp_path / "ft_backbone.pth"),
                *FAST[4:],
            ]
        )
        == 0
    )
    assert main(["predict", str(model), str(test), "--workers", "0", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 7


def test_user_errors_are_one_line_messages(folders, tmp_path, caplog):
    train, _ = folders
    assert main(["probe", str(train / "red"), "-o", str(tmp_path / "m.npz"), *FAST]) == 1
    assert "images outside class folders" in caplog.text or "Only one class" in caplog.text
    caplog.clear()
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 not really")
    assert main(["predict", str(tmp_path / "fake.npz"), str(train)]) == 1
    assert "not an mtdp model file" in caplog.text
