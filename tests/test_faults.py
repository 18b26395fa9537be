"""The fault-injection harness itself (tests/helpers/faults.py): each fault does what it says, draws are
deterministic, triggers fire after the write is applied, and predictions are counted right."""

from __future__ import annotations

import pytest
import requests

from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.cytomine.errors import CytomineRequestError
from tests.helpers.faults import Fault, FaultProxy, count_predictions, server_address, store_query
from tests.helpers.paths import REPO_ROOT


@pytest.fixture
def proxy(server):
    with FaultProxy(server_address(server)) as p:
        yield p


def session(proxy, server, retries=0):
    return CytomineSession.connect(proxy.url, server.public_key, server.private_key, retries=retries, backoff=0.01)


def term_count(server, annotation_id):
    return len(server.store.annotation_terms.list(annotation_id)[1])


def test_requests_pass_through_with_urls_pointing_at_the_proxy(proxy, server, seeded):
    rows = session(proxy, server).get_collection("annotation.json", {"project": seeded.project_id})
    assert len(rows) == len(seeded.annotations)
    assert all(r["cropURL"].startswith(proxy.url) for r in rows)
    assert proxy.stats.requests >= 3 and not proxy.stats.faults


@pytest.mark.parametrize(
    ("kind", "applied"),
    [("500", False), ("reset", False), ("500_late", True), ("504_late", True), ("reset_late", True)],
)
def test_each_fault_fails_the_request_and_is_applied_or_not(proxy, server, seeded, kind, applied):
    s = session(proxy, server)
    target = seeded.annotations[0]
    other = seeded.terms["stroma" if target.term == "tumour" else "tumour"]
    proxy.set_faults([Fault(kind, 1.0, methods=("POST",))])
    with pytest.raises(CytomineRequestError) as failure:
        s.post_json(f"annotation/{target.id}/term/{other}.json", {"annotation": target.id, "term": other})
    assert failure.value.status == {"500": 500, "500_late": 500, "504_late": 504}.get(kind)  # None: no answer
    assert term_count(server, target.id) == (2 if applied else 1)
    assert proxy.stats.faults[kind] == 1


def test_early_504_reaches_the_server_after_the_answer(proxy, server, seeded):
    s = session(proxy, server)
    target = seeded.annotations[0]
    other = seeded.terms["stroma" if target.term == "tumour" else "tumour"]
    proxy.set_faults([Fault("504_early", 1.0, methods=("POST",), delay=0.3)])
    with pytest.raises(CytomineRequestError):
        s.post_json(f"annotation/{target.id}/term/{other}.json", {"annotation": target.id, "term": other})
    proxy.settle()
    assert term_count(server, target.id) == 2


def test_draws_are_deterministic_and_follow_the_rate(proxy, server, seeded):
    s = session(proxy, server)

    def outcomes(seed):
        proxy.set_faults([Fault("500", 0.3, methods=("GET",))], seed=seed)
        results = []
        for a in seeded.annotations * 8:
            try:
                s.get_json(f"annotation/{a.id}.json")
                results.append(True)
            except CytomineRequestError:
                results.append(False)
        return results

    first = outcomes(7)
    assert outcomes(7) == first
    assert outcomes(8) != first
    assert 0.1 < first.count(False) / len(first) < 0.5


def test_trigger_fires_after_the_nth_applied_write(proxy, server, seeded):
    s = session(proxy, server)
    fired = []
    proxy.on_request(2, lambda: fired.append(term_count(server, seeded.annotations[1].id)), path=r"/term/")
    for a in seeded.annotations[:3]:
        other = seeded.terms["stroma" if a.term == "tumour" else "tumour"]
        s.post_json(f"annotation/{a.id}/term/{other}.json", {"annotation": a.id, "term": other})
    assert fired == [2]  # once, when the second write was already in the database


def test_unreachable_upstream_is_a_502(server):
    with FaultProxy("http://127.0.0.1:9") as p:
        response = requests.get(p.url + "/server/ping", timeout=10)
    assert response.status_code == 502


def test_count_predictions(server, seeded):
    from mtdp_core.server.geometry import box_in_cytomine

    job, user = server.store.jobs.create(seeded.project_id, _software(server), server.admin)
    a, b = seeded.annotations[:2]
    term = seeded.terms["tumour"]
    server.store.annotation_terms.add_algo(a.id, term, user)
    height = seeded.images[0]["height"]
    for _ in range(2):  # two algo annotations on a's box
        location = box_in_cytomine(*a.box, height).wkt
        server.store.annotations.create({"image": a.image_id, "location": location, "term": [term]}, user)
    query = store_query(server)
    terms = count_predictions(query, [a.id, b.id], "term")
    assert (terms.expected, terms.present, terms.duplicated, terms.missing) == (2, 1, 0, 1)
    annotations = count_predictions(query, [a.id, b.id], "annotation")
    assert (annotations.present, annotations.duplicated) == (1, 1) and not annotations.exactly_once


def _software(server):
    return server.register_app(REPO_ROOT / "descriptors" / "svm_predict.json")["id"]
