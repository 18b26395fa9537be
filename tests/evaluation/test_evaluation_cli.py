import csv

from mtdp_core.cli import main
from tests.helpers.images import colour_task


def test_compare_then_report(tmp_path, capsys):
    for name, seed in (("alpha", 0), ("beta", 70)):
        colour_task(tmp_path / name / "train", 5, seed)
        colour_task(tmp_path / name / "test", 3, seed + 500)
    out = tmp_path / "report"
    code = main(
        [
            "compare",
            str(tmp_path / "alpha"),
            str(tmp_path / "beta"),
            "--backbone",
            "r18a=resnet18:random",
            "--backbone",
            "eff=efficientnet_lite0:random",
            "--seeds",
            "0,1",
            "--size",
            "32",
            "--workers",
            "0",
            "--device",
            "cpu",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| task | metric | r18a fe | eff fe | r18a fe vs eff fe |" in printed
    with open(out / "scores.csv") as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == 2 * 2 * 2  # backbones x tasks x seeds
    assert (out / "differences_r18a_fe_vs_eff_fe.png").is_file() and (out / "comparison.md").is_file()

    again = tmp_path / "again"
    assert main(["report", str(out / "scores.csv"), "-o", str(again), "--reference", "eff fe", "--title", "T"]) == 0
    assert (again / "comparison.md").read_text().startswith("# T")
    assert (again / "differences_eff_fe_vs_r18a_fe.png").is_file()


def test_compare_with_a_validation_split_and_learning_curves(tmp_path, capsys):
    colour_task(tmp_path / "alpha" / "train", 5, 0)
    colour_task(tmp_path / "alpha" / "val", 2, 200)
    colour_task(tmp_path / "alpha" / "test", 3, 500)
    out = tmp_path / "report"
    args = ["compare", str(tmp_path / "alpha"), "--backbone", "r18=resnet18:random", "--backbone"]
    args += ["eff=efficientnet_lite0:random", "--seeds", "0,1", "--size", "32", "--workers", "0", "--device", "cpu"]
    assert main([*args, "--learning-curve", "0.5,1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Paired differences r18 fe − eff fe" in printed and "| **all tasks** |" in printed
    with open(out / "learning_curves" / "curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 2  # backbones x seeds x fractions
    assert {r["n_train"] for r in rows if r["fraction"] == "1"} == {"14"}  # train + val
    assert (out / "learning_curves" / "learning_curves.png").is_file()
    with open(out / "scores.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 2
