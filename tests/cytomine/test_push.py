"""Pushing predictions: both modes, idempotent re-runs, failures in the middle of a push."""

from __future__ import annotations

import pytest

from mtdp_core.cytomine.annotations import AnnotationFilters, AnnotationRecord, list_annotations
from mtdp_core.cytomine.errors import CytomineRequestError, PushError
from mtdp_core.cytomine.push import Prediction, PredictionPusher, geometry_key, software_job_users


def predictions_for(session, project, flip=False, rate=0.8):
    records = list_annotations(session, AnnotationFilters(project))
    terms = sorted({t for r in records for t in r.terms})
    out = []
    for r in records:
        term = r.terms[0]
        if flip:
            term = terms[1 - terms.index(term)]
        out.append(Prediction(r, term, rate, r.terms[0]))
    return out


def pusher(job_user, server, seeded, mode, **kwargs):
    users = software_job_users(job_user.session, seeded.project_id, job_user.software["name"], job_user.user["id"])
    return PredictionPusher(job_user.session, seeded.project_id, users, mode=mode, chunk_size=3, **kwargs)


def suggested_terms(session, project) -> list[dict]:
    """Every term suggested by a job on the project's annotations, as the core lists them (showAlgo)."""
    return session.get_collection("annotation.json", {"project": project, "showAlgo": True})


def algo_annotations(session, project) -> list[AnnotationRecord]:
    """The annotations jobs created in the project."""
    rows = session.get_collection(
        "annotation.json",
        {
            "project": project,
            "includeAlgo": True,
            "showWKT": True,
            "showBasic": True,
            "showMeta": True,
            "showTerm": True,
        },
    )
    return [r for r in map(AnnotationRecord.from_json, rows) if r.kind == "algo"]


def test_term_mode_suggests_terms_once(server, seeded, make_job_user, admin_session):
    first = make_job_user()
    preds = predictions_for(first.session, seeded.project_id)
    report = pusher(first, server, seeded, "term").push(preds)
    assert report.suggested == 8 and report.unchanged == 0
    rows = suggested_terms(admin_session, seeded.project_id)
    assert len(rows) == 8 and {r["userJob"] for r in rows} == {first.user["id"]}
    assert all(r["rate"] == pytest.approx(0.8) and r["idExpectedTerm"] == r["idTerm"] for r in rows)
    # A new job of the same software: nothing to add, nothing duplicated.
    second = make_job_user()
    again = pusher(second, server, seeded, "term").push(predictions_for(second.session, seeded.project_id))
    assert again.suggested == 0 and again.unchanged == 8
    assert len(suggested_terms(admin_session, seeded.project_id)) == 8
    # A changed prediction is added (the core lets a job suggest, not delete another job's term).
    third = make_job_user()
    changed = pusher(third, server, seeded, "term").push(predictions_for(third.session, seeded.project_id, flip=True))
    assert changed.suggested == 8
    assert len(suggested_terms(admin_session, seeded.project_id)) == 16


def test_annotation_mode_is_idempotent_and_updates_changed_terms(server, seeded, make_job_user, admin_session):
    first = make_job_user()
    report = pusher(first, server, seeded, "annotation").push(predictions_for(first.session, seeded.project_id))
    assert report.created == 8 and len(report.pushed) == 8
    algo = algo_annotations(admin_session, seeded.project_id)
    assert len(algo) == 8
    sources = {a.id: a for a in seeded.annotations}
    for source_id, created in report.pushed.items():
        row = next(a for a in algo if a.id == created)
        assert row.image == sources[source_id].image_id
    second = make_job_user()
    again = pusher(second, server, seeded, "annotation").push(predictions_for(second.session, seeded.project_id))
    assert again.created == 0 and again.unchanged == 8
    third = make_job_user()
    flipped = pusher(third, server, seeded, "annotation").push(
        predictions_for(third.session, seeded.project_id, flip=True)
    )
    assert flipped.created == 0 and flipped.suggested == 8
    assert len(algo_annotations(admin_session, seeded.project_id)) == 8


def test_failure_after_some_chunks_then_rerun_completes_without_duplicates(
    server, seeded, make_job_user, admin_session, monkeypatch
):
    first = make_job_user()
    original = first.session.post_json
    calls = {"n": 0}

    def failing_from_second_chunk(path, body=None, params=None, **kwargs):
        if path == "annotation.json":
            calls["n"] += 1
            if calls["n"] >= 2:
                raise CytomineRequestError("HTTP 502: bad gateway", status=502)
        return original(path, body, params, **kwargs)

    monkeypatch.setattr(first.session, "post_json", failing_from_second_chunk)
    with pytest.raises(PushError, match="Re-run the job to push the remaining predictions") as info:
        pusher(first, server, seeded, "annotation", retries=2, backoff=0.0).push(
            predictions_for(first.session, seeded.project_id)
        )
    assert "3 of 8 pushed" in str(info.value)
    assert len(algo_annotations(admin_session, seeded.project_id)) == 3
    second = make_job_user()
    report = pusher(second, server, seeded, "annotation").push(predictions_for(second.session, seeded.project_id))
    assert report.created == 5 and report.unchanged == 3
    assert len(algo_annotations(admin_session, seeded.project_id)) == 8


def test_lost_answer_is_reconciled_not_duplicated(server, seeded, make_job_user, admin_session, monkeypatch):
    job = make_job_user()
    original = job.session.post_json
    lost = {"done": False}

    def answer_lost_once(path, body=None, params=None, **kwargs):
        result = original(path, body, params, **kwargs)
        if path == "annotation.json" and not lost["done"]:
            lost["done"] = True  # the server created the chunk, the client never heard back
            raise CytomineRequestError("read timed out", status=None)
        return result

    monkeypatch.setattr(job.session, "post_json", answer_lost_once)
    report = pusher(job, server, seeded, "annotation", backoff=0.0).push(
        predictions_for(job.session, seeded.project_id)
    )
    assert report.created == 8 and not report.failed
    assert len(algo_annotations(admin_session, seeded.project_id)) == 8


def test_term_push_retries_then_reports(server, seeded, make_job_user, admin_session, monkeypatch):
    job = make_job_user()
    original = job.session.post_json
    state = {"n": 0}

    def flaky(path, body=None, params=None, **kwargs):
        state["n"] += 1
        if state["n"] % 2:
            raise CytomineRequestError("HTTP 503", status=503)
        return original(path, body, params, **kwargs)

    monkeypatch.setattr(job.session, "post_json", flaky)
    report = pusher(job, server, seeded, "term", backoff=0.0, threads=1).push(
        predictions_for(job.session, seeded.project_id)
    )
    assert report.suggested == 8 and len(suggested_terms(admin_session, seeded.project_id)) == 8


def test_predictions_without_term_are_reported_not_pushed(server, seeded, make_job_user):
    job = make_job_user()
    preds = predictions_for(job.session, seeded.project_id)
    preds = [Prediction(p.annotation, None, p.rate) if i % 2 else p for i, p in enumerate(preds)]
    report = pusher(job, server, seeded, "term").push(preds)
    assert report.not_pushable == 4 and report.suggested == 4 and "4 without a term" in report.summary()


def test_geometry_key_normalises():
    a = geometry_key(1, "POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))")
    b = geometry_key(1, "POLYGON ((10 0, 10 10, 0 10, 0 0, 10 0))")
    assert a == b and geometry_key(2, "POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))") != a
