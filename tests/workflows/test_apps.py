"""The four apps end to end against the local server, with the official client.

A few tests launch apps the way Cytomine does (the command line built from the descriptor, a
subprocess running as the job user); the others call ``main(argv)`` in this process, as a
person running the app with their own keys does (a job is created), which is much faster.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.cytomine.errors import CytomineRequestError
from mtdp_core.server.testing import seed_synthetic_project
from tests.helpers.apps import FAILED, FAST, JOB_CLASS, SUCCESS, as_argv, load_workflow

KILLED = 8


def algo_terms(apps, job) -> list[dict]:
    user = apps.server.store.users.job_user(job["id"])["id"]
    return apps.server.store.annotation_terms.list_algo(user)


# --------------------------------------------------------------------------- launched as by Cytomine


@pytest.mark.slow
def test_svm_train_and_predict_launched_from_their_descriptors(apps):
    train = apps.launch("svm_train", **FAST, cv_folds=3)
    assert train["status"] == SUCCESS, train["status_comment"]
    assert train["progress"] == 100 and train["status_comment"].startswith("CV roc_auc")
    assert apps.file_names(train) == [
        "confusion_matrix.png",
        "log.out",
        "metrics.json",
        "mtdp-model.npz",
        "report.html",
    ]
    props = apps.properties(train)
    assert props["classes"] == "tumour,stroma" and props["binary"] == "false" and props["crops_failed"] == "0"
    assert float(props["cv_score"]) > 0.9  # the tints make the classes separable even for random features
    metrics = json.loads(apps.files(train)["metrics.json"].read_text())
    assert metrics["n_samples"] == 18 and len(metrics["grid"]) == 11
    assert sum(map(sum, metrics["cross_validated"]["confusion_matrix"])) == 18

    predict = apps.launch("svm_predict", cytomine_id_job=train["id"], n_workers=0)
    assert predict["status"] == SUCCESS, predict["status_comment"]
    suggestions = algo_terms(apps, predict)
    assert len(suggestions) == 18 and all(0.5 <= s["rate"] <= 1 for s in suggestions)
    truth = {a.id: apps.project.terms[a.term] for a in apps.project.annotations}
    assert sum(truth[s["annotation_id"]] == s["term_id"] for s in suggestions) >= 16
    assert all(s["expected_term_id"] == truth[s["annotation_id"]] for s in suggestions)
    rows = list(csv.DictReader(open(apps.files(predict)["predictions.csv"])))
    assert len(rows) == 18 and {r["predicted_class"] for r in rows} <= {"tumour", "stroma"}


@pytest.mark.slow
def test_extract_features_launched(apps):
    job = apps.launch("extract_features", **FAST, cytomine_id_terms=[apps.project.terms["tumour"]])
    assert job["status"] == SUCCESS, job["status_comment"]
    files = apps.files(job)
    with np.load(files["features.npz"], allow_pickle=False) as npz:
        assert npz["features"].shape == (9, 512) and npz["features"].dtype == np.float32
        tumour = [a for a in apps.project.annotations if a.term == "tumour"]
        assert sorted(npz["annotation_ids"].tolist()) == sorted(a.id for a in tumour)
        assert set(npz["term_ids"].tolist()) == {apps.project.terms["tumour"]}
        assert set(npz["image_ids"].tolist()) == {a.image_id for a in tumour}
    meta = json.loads(files["features.json"].read_text())
    assert meta["backbone"]["arch"] == "resnet18" and meta["crop"]["max_size"] == 32


@pytest.mark.slow
def test_finetune_predict_launched(apps):
    images = [i["id"] for i in apps.project.images]
    job = apps.launch(
        "finetune_predict",
        **FAST,
        epochs=2,
        learning_rates="0.01",
        patience=0,
        cytomine_id_images=images[:2],
        cytomine_id_target_images=images[2:],
    )
    assert job["status"] == SUCCESS, job["status_comment"]
    assert {"mtdp-model.npz", "history.csv", "metrics.json", "predictions.csv"} <= set(apps.file_names(job))
    assert len(algo_terms(apps, job)) == 6  # the six annotations of the target image
    assert apps.properties(job)["best_epoch"] in ("1", "2")


def test_invalid_parameter_launched_fails_with_its_message(apps):
    job = apps.launch("svm_train", **FAST, cv_folds=1)
    assert job["status"] == FAILED
    assert job["status_comment"] == "Set cv_folds to a whole number from 2 to 20 (got '1')."


# --------------------------------------------------------------------------- in this process


@pytest.fixture
def trained(apps):
    job = apps.run("svm_train", **FAST, cv_folds=3)
    assert job["status"] == SUCCESS, job["status_comment"]
    return job


def test_svm_predict_rerun_creates_no_duplicates(apps, trained):
    for mode in ("annotation", "term"):
        first = apps.run("svm_predict", cytomine_id_job=trained["id"], push_mode=mode, n_workers=0)
        again = apps.run("svm_predict", cytomine_id_job=trained["id"], push_mode=mode, n_workers=0)
        assert first["status"] == again["status"] == SUCCESS
        assert "0 already up to date" in first["status_comment"]
        assert "18 already up to date" in again["status_comment"], again["status_comment"]
    assert apps.algo_annotation_count() == 18
    # 18 algo terms on the created annotations + 18 suggestions on the people's annotations.
    assert apps.algo_term_count() == 36


@pytest.mark.slow
def test_push_failure_midway_then_rerun_completes(apps, trained, monkeypatch):
    original = CytomineSession.post_json
    calls = {"n": 0}

    def flaky(self, path, body=None, params=None, **kwargs):
        if path == "annotation.json":
            calls["n"] += 1
            if calls["n"] >= 2:  # the first chunk goes through, then the server keeps failing
                raise CytomineRequestError("HTTP 503: service unavailable", status=503)
        return original(self, path, body, params, **kwargs)

    monkeypatch.setattr(CytomineSession, "post_json", flaky)
    monkeypatch.setattr("mtdp_core.cytomine.push.DEFAULT_CHUNK_SIZE", 5)
    monkeypatch.setattr("mtdp_core.cytomine.client.DEFAULT_BACKOFF", 0.0)
    monkeypatch.setattr("mtdp_core.cytomine.push.DEFAULT_SETTLE", 0.0)
    failed = apps.run("svm_predict", cytomine_id_job=trained["id"], push_mode="annotation", n_workers=0)
    assert failed["status"] == FAILED
    assert failed["status_comment"].startswith(
        "Re-run the job to push the remaining 13 predictions (nothing is duplicated): 5 of 18 pushed"
    )
    assert apps.algo_annotation_count() == 5
    monkeypatch.setattr(CytomineSession, "post_json", original)
    done = apps.run("svm_predict", cytomine_id_job=trained["id"], push_mode="annotation", n_workers=0)
    assert done["status"] == SUCCESS and "13 annotations created, 5 already up to date" in done["status_comment"]
    assert apps.algo_annotation_count() == 18


def test_failed_crops_are_counted_and_reported(apps, monkeypatch):
    original = CytomineSession.request_once
    lost = apps.project.annotations[0].id

    def missing_crop(self, method, path, **kwargs):
        if f"/{lost}/crop." in path:
            raise CytomineRequestError("HTTP 404: image file missing", status=404)
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(CytomineSession, "request_once", missing_crop)
    job = apps.run("extract_features", **FAST)
    assert job["status"] == SUCCESS
    assert "1 crops failed" in job["status_comment"]
    assert apps.properties(job)["crops_failed"] == "1"
    failures = list(csv.DictReader(open(apps.files(job)["crop_failures.csv"])))
    assert [int(f["annotation"]) for f in failures] == [lost] and "404" in failures[0]["reason"]
    with np.load(apps.files(job)["features.npz"]) as npz:
        assert len(npz["annotation_ids"]) == 17 and lost not in npz["annotation_ids"]


def test_too_many_failed_crops_fail_the_job(apps, monkeypatch):
    def broken(self, method, path, **kwargs):
        if "/crop." in path:
            raise CytomineRequestError("HTTP 404: gone", status=404)
        return original(self, method, path, **kwargs)

    original = CytomineSession.request_once
    monkeypatch.setattr(CytomineSession, "request_once", broken)
    job = apps.run("svm_train", **FAST)
    assert job["status"] == FAILED and job["status_comment"].startswith(
        "Check the server and images, then re-run: 18 of 18 crops failed"
    )


# --------------------------------------------------------------------------- failure cases


def test_no_annotation_matches(apps):
    store = apps.server.store
    empty = store.ontologies.create_term("necrosis", apps.project.ontology_id)
    job = apps.run("svm_train", **FAST, cytomine_id_terms=[empty["id"]])
    assert job["status"] == FAILED
    assert job["status_comment"].startswith("Widen the filters or annotate first: no annotation with a term matches")
    assert "terms necrosis" in job["status_comment"]


def test_fewer_than_two_classes(apps):
    job = apps.run("svm_train", **FAST, cytomine_id_terms=[apps.project.terms["stroma"]])
    assert job["status"] == FAILED
    assert job["status_comment"] == (
        "Select annotations of at least two terms: only 'stroma' (9 annotations) is among those selected."
    )


def test_annotation_without_term_in_training(apps):
    store = apps.server.store
    image = apps.project.images[0]
    untermed = store.annotations.create(
        {"image": image["id"], "location": "POLYGON ((1 1, 9 1, 9 9, 1 9, 1 1))"}, store.users.find_by_username("admin")
    )
    job = apps.run("svm_train", **FAST)
    assert job["status"] == FAILED
    assert job["status_comment"].startswith("Give each training annotation a term, or select terms")
    assert str(untermed["id"]) in job["status_comment"]


def test_model_job_without_model(apps):
    features = apps.run("extract_features", **FAST)
    job = apps.run("svm_predict", cytomine_id_job=features["id"])
    assert job["status"] == FAILED
    assert job["status_comment"].startswith(
        f"Give the id of a successful training job as cytomine_id_job: job {features['id']} "
        "(MTDP-Extract-Features, successful) has no mtdp-model.npz attached"
    )
    missing = apps.run("svm_predict", cytomine_id_job=999999)
    assert missing["status"] == FAILED and "job 999999 does not exist" in missing["status_comment"]


@pytest.mark.slow
def test_model_from_another_backbone_is_refused(apps, trained):
    job = apps.run("svm_predict", cytomine_id_job=trained["id"], backbone="resnet34")
    assert job["status"] == FAILED
    assert job["status_comment"].startswith(
        "Leave backbone and weights empty (or set resnet18 and random): the "
        f"model of job {trained['id']} was trained on resnet18"
    )
    assert not algo_terms(apps, job)
    other_weights = apps.run("svm_predict", cytomine_id_job=trained["id"], weights="imagenet")
    assert other_weights["status"] == FAILED and other_weights["status_comment"].endswith(
        "trained on resnet18 (random weights, seed 0) features, not imagenet weights."
    )


def test_invalid_parameter_in_process(apps):
    job = apps.run("svm_predict", cytomine_id_job=1, push_mode="polygon")
    assert job["status"] == FAILED and job["status_comment"] == (
        "Set push_mode to one of term, annotation (got 'polygon')."
    )


def test_binary_mode(apps):
    job = apps.run("svm_train", **FAST, cv_folds=3, cytomine_positive_terms=[apps.project.terms["tumour"]])
    assert job["status"] == SUCCESS, job["status_comment"]
    props = apps.properties(job)
    assert props["binary"] == "true" and props["positive_terms"] == str(apps.project.terms["tumour"])
    assert props["classes"] == "stroma,tumour"  # class 0 = negative, 1 = positive
    assert props["class_term_ids"] == f"{apps.project.terms['stroma']},{apps.project.terms['tumour']}"


# --------------------------------------------------------------------------- BIAFLOWS local mode


def test_biaflows_local_mode_on_folders(tiny_image_folder, tmp_path):
    out = tmp_path / "out"
    fast = as_argv({k: v for k, v in FAST.items() if k != "crop_max_size"})
    code = load_workflow("svm_train").main(
        ["--local", "--infolder", str(tiny_image_folder), "--outfolder", str(out), "--cv_folds", "2", *fast]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["blue", "red"] and metrics["n_samples"] == 8
    properties = json.loads((out / "properties.json").read_text())
    assert properties["classes"] == "blue,red"
    assert "class_term_ids" not in properties  # folders are not Cytomine terms (was "None,None")

    # Predict a flat folder of images, with the ground truth in --gtfolder (a labels.csv).
    targets, truth = tmp_path / "targets", tmp_path / "gt"
    targets.mkdir()
    truth.mkdir()
    for path in sorted(tiny_image_folder.rglob("*_0.jpg")) + sorted(tiny_image_folder.rglob("*_1.png")):
        (targets / path.name).write_bytes(path.read_bytes())
    (truth / "labels.csv").write_text(
        "filename,label\n" + "".join(f"{p.name},{p.parent.name}\n" for p in sorted(tiny_image_folder.rglob("*_[01].*")))
    )
    predicted = tmp_path / "predicted"
    code = load_workflow("svm_predict").main(
        [
            "-nd",
            "-nau",
            "-nmu",
            "--model",
            str(out / "mtdp-model.npz"),
            "--infolder",
            str(targets),
            "--gtfolder",
            str(truth),
            "--outfolder",
            str(predicted),
            "--n_workers",
            "0",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(open(predicted / "predictions.csv")))
    assert len(rows) == 4 and {r["predicted_class"] for r in rows} <= {"blue", "red"}
    result = json.loads((predicted / "metrics.json").read_text())
    assert result["n"] == 4 and result["accuracy"] == 1.0

    code = load_workflow("extract_features").main(
        ["--local", "--infolder", str(tiny_image_folder), "--outfolder", str(tmp_path / "features"), *fast]
    )
    assert code == 0
    with np.load(tmp_path / "features" / "features.npz") as npz:
        assert npz["features"].shape == (8, 512) and sorted(set(npz["labels"].tolist())) == ["blue", "red"]


def test_biaflows_no_download_uses_crops_in_infolder(apps, tmp_path):
    infolder = tmp_path / "in"
    first = apps.run("extract_features", "--infolder", str(infolder), **FAST)
    assert first["status"] == SUCCESS and len(list(infolder.glob("*.png"))) == 18
    (infolder / f"{apps.project.annotations[0].id}.png").unlink()
    again = apps.run("extract_features", "-nd", "--infolder", str(infolder), **FAST)
    assert again["status"] == SUCCESS and "1 crops failed" in again["status_comment"]
    refused = apps.run("extract_features", "-nd", **FAST)
    assert refused["status"] == FAILED and refused["status_comment"].startswith("Give --infolder with --no_download")


@pytest.mark.slow
def test_finetune_local_mode_predicts_the_unlabelled_images(tiny_image_folder, tmp_path):
    for path in sorted(tiny_image_folder.rglob("*_3.png")):  # one image per class leaves its class folder
        path.rename(tiny_image_folder / path.name)
    out = tmp_path / "out"
    fast = as_argv({k: v for k, v in FAST.items() if k != "crop_max_size"})
    code = load_workflow("finetune_predict").main(
        [
            "--local",
            "--infolder",
            str(tiny_image_folder),
            "--outfolder",
            str(out),
            "--epochs",
            "1",
            "--learning_rates",
            "0.01",
            "--val_fraction",
            "0.5",
            *fast,
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["filename"] for r in rows) == ["blue_3.png", "red_3.png"]
    assert (out / "mtdp-model.npz").is_file() and (out / "history.csv").is_file()


def test_local_mode_without_folder_says_what_to_give(tmp_path):
    assert load_workflow("svm_train").main(["--local", "--outfolder", str(tmp_path)]) == 1
    assert load_workflow("svm_train").main([]) == 2  # neither a server nor --local


# --------------------------------------------------------------------------- honest statuses (issue 11)


def test_corrupt_model_names_the_training_jobs_attachment(apps):
    # Issue 11 item 11: the message named the temporary file it was downloaded to.
    store = apps.server.store
    job, _ = store.jobs.create(apps.project.project_id, apps.software["svm_train"], apps.server.admin)
    store.jobs.set_status(job["id"], SUCCESS, "done", 100)
    attached = store.meta.add_attached_file(JOB_CLASS, job["id"], "mtdp-model.npz", b"not a model at all")
    failed = apps.run("svm_predict", cytomine_id_job=job["id"])
    assert failed["status"] == FAILED
    assert failed["status_comment"].startswith(
        f"Give the id of a training job with a usable model as cytomine_id_job: the mtdp-model.npz attached to "
        f"job {job['id']} (attached file {attached['id']}) is not an mtdp model file"
    ), failed["status_comment"]
    assert "/tmp" not in failed["status_comment"] and "mtdp-svm_predict" not in failed["status_comment"]


def test_model_of_another_ontology_fails_at_once(apps, trained, tmp_path):
    # Issue 11 item 10: every push was refused (terms of another ontology) and the job said SUCCESS.
    # The model of a project with other terms, attached to a job of this other project (a job's keys
    # reach its own project only: the model comes as a file, as one copied between servers would).
    store = apps.server.store
    other = seed_synthetic_project(apps.server, tmp_path / "other", name="other", terms=("necrosis", "fat"))
    holder, _ = store.jobs.create(other.project_id, apps.software["svm_train"], apps.server.admin)
    store.jobs.set_status(holder["id"], SUCCESS, "copied", 100)
    store.meta.add_attached_file(
        JOB_CLASS, holder["id"], "mtdp-model.npz", apps.files(trained)["mtdp-model.npz"].read_bytes()
    )
    argv = apps.argv("svm_predict", cytomine_id_job=holder["id"], cytomine_id_project=other.project_id)
    assert load_workflow("svm_predict").main(argv) == 1
    job = max(store.jobs.list(project=other.project_id), key=lambda j: j["id"])
    assert job["status"] == FAILED and job["progress"] <= 10
    assert job["status_comment"].startswith(
        f"Use a model trained on this project's terms: the model of job {holder['id']} predicts tumour, stroma "
        f"(terms {apps.project.terms['tumour']}, {apps.project.terms['stroma']}), which are not in the ontology of "
        f"project {other.project_id} (necrosis, fat)."
    ), job["status_comment"]


def test_predict_that_wrote_nothing_is_not_a_success(apps, trained, monkeypatch):
    original = CytomineSession.post_json

    def refuse_terms(self, path, body=None, params=None, **kwargs):
        if "/term/" in path:
            raise CytomineRequestError(f"POST {path} answered HTTP 400: annotation is locked", status=400)
        return original(self, path, body, params, **kwargs)

    monkeypatch.setattr(CytomineSession, "post_json", refuse_terms)
    job = apps.run("svm_predict", cytomine_id_job=trained["id"], push_mode="term", n_workers=0)
    assert job["status"] == FAILED
    assert job["status_comment"].startswith(
        "Check the annotations and the model: the server refused all 18 predictions; e.g. annotation"
    ), job["status_comment"]
    assert "annotation is locked" in job["status_comment"] and apps.properties(job)["push_failed"] == "18"


def test_a_class_with_one_annotation_is_named_before_any_crop(apps):
    # Issue 11 item 11: "Class np.int64(7) has a single training sample", after crops and features.
    store = apps.server.store
    rare = store.ontologies.create_term("necrosis", apps.project.ontology_id)
    target = apps.project.annotations[0]
    store.annotation_terms.add(target.id, rare["id"], apps.server.admin, clear="user")
    job = apps.run("svm_train", **FAST)
    assert job["status"] == FAILED and job["progress"] <= 5, (job["progress"], job["status_comment"])
    assert job["status_comment"] == (
        "Annotate more, or leave these terms out (cytomine_id_terms): 'necrosis' has 1 annotation; "
        "cross-validation needs at least 2 per class."
    )


def test_training_on_one_image_says_its_folds_are_not_grouped(apps):
    # Issue 11 item 11: one image silently gave ungrouped (optimistic) cross-validation.
    image = apps.project.images[0]["id"]
    job = apps.run("svm_train", **FAST, cv_folds=2, cytomine_id_images=[image])
    assert job["status"] == SUCCESS
    assert "folds not grouped by image (all annotations on 1 image: the score is optimistic)" in job["status_comment"]
    assert apps.properties(job)["cv_grouped"] == "false"


def test_a_zoom_that_leaves_no_pixels_is_refused_before_downloading(apps):
    # Issue 11 item 11: crop_zoom=8 trained on 1x1 crops without a word.
    job = apps.run("svm_train", **FAST, crop_zoom=8)
    assert job["status"] == FAILED and job["progress"] <= 5
    assert job["status_comment"].startswith("Lower crop_zoom to at most 1: at zoom 8 the crops would be 1 pixel wide")


def test_a_job_stopped_by_the_local_launcher_reports_how_to_resume(apps):
    # Issue 11 item 11: a job whose process got SIGTERM was reported "Exit code -15" by the local launcher.
    import os
    import signal
    import time

    job = apps.server.launch("svm_train", apps.project.project_id, {**FAST, "cv_folds": 3}, wait=False)
    deadline = time.monotonic() + 300
    while apps.server.store.jobs.get(job["id"])["progress"] < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(apps.server.launcher._running[job["id"]].process.pid, signal.SIGTERM)
    ended = apps.server.launcher.wait(job["id"], 120)
    assert ended["status"] == KILLED and ended["status_comment"].startswith("Re-run the job to finish it"), ended
