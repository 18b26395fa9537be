"""Pushing predictions: both modes, idempotent re-runs, failures in the middle of a push."""

from __future__ import annotations

import threading

import pytest

from mtdp_core.cytomine.annotations import AnnotationFilters, AnnotationRecord, list_annotations
from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.cytomine.errors import CytomineRequestError, PushError
from mtdp_core.cytomine.push import Prediction, PredictionPusher, geometry_key, software_job_users
from tests.helpers.faults import Fault, FaultProxy, count_predictions, server_address, store_query


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
    with pytest.raises(PushError, match="Re-run the job to push the remaining 5 predictions") as info:
        pusher(first, server, seeded, "annotation", retries=2, backoff=0.0, settle=0.0).push(
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


# --------------------------------------------------------------------------- faults, concurrency


@pytest.fixture
def proxy(server):
    with FaultProxy(server_address(server)) as p:
        yield p


def proxied(job_user, proxy):
    """The job user's session, through the fault proxy."""
    return CytomineSession.connect(proxy.url, job_user.user["public_key"], job_user.user["private_key"], backoff=0.01)


def targets(seeded):
    return [a.id for a in seeded.annotations]


WRITE_FAULTS = [  # 40% of the writes fail, half of those after the server applied them
    Fault("500", 0.08, methods=("POST", "DELETE")),
    Fault("500_late", 0.08, methods=("POST", "DELETE")),
    Fault("504_late", 0.08, methods=("POST", "DELETE")),
    Fault("504_early", 0.08, methods=("POST", "DELETE"), delay=0.3),
    Fault("reset", 0.04, methods=("POST", "DELETE")),
    Fault("reset_late", 0.04, methods=("POST", "DELETE")),
]


@pytest.mark.parametrize("mode", ["annotation", "term"])
def test_each_prediction_once_whatever_the_writes_meet(server, seeded, make_job_user, proxy, mode):
    # Issue 11 item 8: a chunk answered 504 after the server had applied it (or applied it after
    # the gateway answered) was sent again: duplicates, and the job said SUCCESS.
    for seed in range(3):
        job = make_job_user()
        session = proxied(job, proxy)
        preds = predictions_for(session, seeded.project_id)
        proxy.set_faults(WRITE_FAULTS, seed=seed)
        pusher = PredictionPusher(
            session, seeded.project_id, mode=mode, software=job.software["name"], chunk_size=3, settle=1.0
        )
        report = pusher.push(preds)
        proxy.set_faults([])
        counts = count_predictions(store_query(server), targets(seeded), mode)
        assert counts.exactly_once, (seed, counts, report.summary())
        assert report.written == 8 and len(report.pushed) == 8 and not report.failed
        if mode == "annotation":  # the first run created them; later runs find them
            assert report.created == (8 if seed == 0 else 0) and report.unchanged == (0 if seed == 0 else 8)
    assert proxy.stats.faults  # the faults did happen


@pytest.mark.parametrize("mode", ["annotation", "term"])
def test_two_jobs_pushing_at_once_add_each_prediction_once(server, seeded, make_job_user, proxy, mode):
    # Issue 11 item 8: two predict jobs run at once both found nothing and both pushed everything.
    jobs = [make_job_user(), make_job_user()]
    proxy.set_faults([Fault("delay", 1.0, methods=("POST",), path=r"^/api/annotation", delay=0.1)])
    reports, errors = {}, []

    def run(job):
        try:
            session = proxied(job, proxy)
            pusher = PredictionPusher(
                session, seeded.project_id, mode=mode, software=job.software["name"], job=job.job["id"], chunk_size=3
            )
            reports[job.job["id"]] = pusher.push(predictions_for(session, seeded.project_id))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert count_predictions(store_query(server), targets(seeded), mode).exactly_once
    assert sorted(r.unchanged for r in reports.values()) == [0, 8]  # the second found the first's work
    properties = server.store.meta.list_properties("be.cytomine.project.Project", seeded.project_id)
    assert not [p for p in properties if p["key"].startswith("mtdp-push-lock:")]  # released


def test_own_duplicates_are_removed_and_the_oldest_kept(server, seeded, make_job_user):
    # Two annotations at one place from this job (e.g. an earlier run's request that landed late):
    # the check after pushing keeps the oldest and deletes the other.
    job = make_job_user()
    preds = predictions_for(job.session, seeded.project_id)
    first = preds[0]
    twin = server.store.annotations.create(
        {"image": first.annotation.image, "location": first.annotation.location, "term": [first.term]},
        server.store.users.get(job.user["id"]),
    )
    report = PredictionPusher(job.session, seeded.project_id, [job.user["id"]], mode="annotation").push(preds)
    assert report.unchanged == 1 and report.created == 7 and report.pushed[first.annotation.id] == twin["id"]
    assert count_predictions(store_query(server), targets(seeded), "annotation").exactly_once


def test_a_bulk_create_applied_after_its_504_is_not_left_twice(server, seeded, make_job_user, proxy):
    # The gateway answers 504 at once and passes the request on 0.5 s later: the check before
    # re-sending finds nothing, so the chunk is sent again; the check after pushing removes the twin.
    job = make_job_user()
    session = proxied(job, proxy)
    proxy.set_faults([Fault("504_early", 1.0, methods=("POST",), path="^/api/annotation.json$", delay=0.5, times=1)])
    pusher = PredictionPusher(
        session, seeded.project_id, mode="annotation", software=job.software["name"], chunk_size=3
    )
    report = pusher.push(predictions_for(session, seeded.project_id))
    proxy.settle()
    assert count_predictions(store_query(server), targets(seeded), "annotation").exactly_once
    assert report.created == 8 and report.removed == 3 and "3 duplicates removed" in report.summary()
