"""Listing annotations with filters and turning their terms into training labels."""

from __future__ import annotations

import pytest

from mtdp_core.cytomine.annotations import (
    AnnotationFilters,
    AnnotationRecord,
    list_annotations,
    project_terms,
    require_annotations,
    training_labels,
)
from mtdp_core.cytomine.errors import CytomineRequestError, MissingTermError, NoAnnotationsError, TooFewClassesError


def test_listing_with_filters(admin_session, seeded):
    tumour = seeded.terms["tumour"]
    image = seeded.images[0]["id"]
    every = list_annotations(admin_session, AnnotationFilters(seeded.project_id))
    assert sorted(r.id for r in every) == sorted(a.id for a in seeded.annotations)
    assert all(r.location.startswith("POLYGON") and r.crop_url.endswith("/crop.png") for r in every)
    some = list_annotations(admin_session, AnnotationFilters(seeded.project_id, images=(image,), terms=(tumour,)))
    expected = [a.id for a in seeded.annotations if a.image_id == image and a.term == "tumour"]
    assert sorted(r.id for r in some) == sorted(expected) and all(r.terms == (tumour,) for r in some)
    assert project_terms(admin_session, seeded.project_id) == {v: k for k, v in seeded.terms.items()}


def test_reviewed_only_lists_reviewed_copies(admin_session, seeded):
    target = seeded.annotations[0]
    admin_session.post_json(f"annotation/{target.id}/review.json", {"terms": [seeded.terms["stroma"]]})
    reviewed = list_annotations(admin_session, AnnotationFilters(seeded.project_id, reviewed_only=True))
    assert len(reviewed) == 1 and reviewed[0].kind == "reviewed" and reviewed[0].parent == target.id
    assert reviewed[0].terms == (seeded.terms["stroma"],)


def test_no_match_names_the_filters(admin_session, seeded):
    filters = AnnotationFilters(seeded.project_id, users=(99999,), terms=(seeded.terms["tumour"],), reviewed_only=True)
    records = list_annotations(admin_session, filters)
    with pytest.raises(NoAnnotationsError) as info:
        require_annotations(records, filters, {seeded.terms["tumour"]: "tumour"})
    message = str(info.value)
    assert message.startswith("Widen the filters") and "users 99999" in message and "terms tumour" in message


def record(id, *terms):
    return AnnotationRecord(id, 1, 1, 1, tuple(terms), "POINT (1 1)", "")


NAMES = {10: "tumour", 11: "stroma", 12: "necrosis"}


def test_training_labels():
    labels = training_labels([record(1, 10), record(2, 11), record(3, 10, 12)], NAMES, selected_terms=(10, 11))
    assert labels.labels == [10, 11, 10] and labels.class_names == {10: "tumour", 11: "stroma"}
    binary = training_labels([record(1, 10), record(2, 11), record(3, 12)], NAMES, positive_terms=(11, 12))
    assert binary.labels == [0, 1, 1] and binary.class_ids == {1: None, 0: 10}
    assert binary.class_names == {1: "positive (stroma, necrosis)", 0: "tumour"}


@pytest.mark.parametrize(
    ("records", "kwargs", "error", "start"),
    [
        ([record(1, 10), record(2), record(3)], {}, MissingTermError, "Give each training annotation a term"),
        ([record(1, 10, 11), record(2, 11)], {}, MissingTermError, "Keep one term per training annotation"),
        ([record(1, 10), record(2, 10)], {}, TooFewClassesError, "Select annotations of at least two terms"),
        (
            [record(1, 10), record(2, 10)],
            {"positive_terms": (10,)},
            TooFewClassesError,
            "Select annotations of both classes for binary mode",
        ),
        ([record(1, 10), record(2, 11)], {"positive_terms": (99,)}, TooFewClassesError, "Choose positive terms"),
        (
            [record(1, 10), record(2, 10), record(3, 11)],
            {"min_per_class": 2},
            TooFewClassesError,
            "Annotate more, or leave these terms out (cytomine_id_terms): 'stroma' has 1 annotation; "
            "cross-validation needs at least 2 per class.",
        ),
    ],
)
def test_training_label_errors(records, kwargs, error, start):
    with pytest.raises(error) as info:
        training_labels(records, NAMES, **kwargs)
    assert str(info.value).startswith(start) and len(str(info.value)) <= 255


def test_a_refused_listing_keeps_the_servers_reason(admin_session, seeded, monkeypatch):
    # Issue 11 item 11: a listing answered 404 was retried four times and reported as a made-up 500.
    calls = []
    original = admin_session.request_once
    monkeypatch.setattr(admin_session, "request_once", lambda *a, **k: calls.append(a) or original(*a, **k))
    with pytest.raises(CytomineRequestError) as failure:
        list_annotations(admin_session, AnnotationFilters(seeded.project_id, images=(999999,)))
    assert failure.value.status == 404 and len(calls) == 1
    message = str(failure.value)
    assert message.startswith("Check cytomine_id_images, cytomine_id_users and cytomine_id_terms:")
    assert "HTTP 404" in message and "999999" in message
