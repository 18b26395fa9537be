"""The data API driven by the official client (cytomine-python-client 3.0.0), as the apps use it."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest
import requests
import shapely
from cytomine.models import (
    AlgoAnnotationTerm,
    Annotation,
    AnnotationCollection,
    AnnotationTerm,
    AttachedFile,
    AttachedFileCollection,
    ImageInstance,
    ImageInstanceCollection,
    Ontology,
    Project,
    ProjectCollection,
    Property,
    PropertyCollection,
    Term,
    TermCollection,
    User,
    UserCollection,
)

from mtdp_core.server.auth import authorization_header, legacy_token
from mtdp_core.server.geometry import box_in_cytomine


def _raw(server, method, path, body=None, *, keys=None):
    """A signed request outside the client (to see status codes and bodies the client hides)."""
    public_key, private_key = keys or (server.public_key, server.private_key)
    date = formatdate(usegmt=True)
    prepared = requests.Request(method, server.url + path, data=None if body is None else json.dumps(body)).prepare()
    content_type = "application/json" if body is not None else ""
    prepared.headers.update(
        {
            "date": date,
            "authorization": authorization_header(
                public_key, private_key, legacy_token(method, "", content_type, date, prepared.path_url)
            ),
        }
    )
    if content_type:
        prepared.headers["content-type"] = content_type
    return requests.Session().send(prepared, timeout=30)


# ---------------------------------------------------------------------- projects, images, terms
def test_list_projects_images_terms(client, seeded):
    projects = ProjectCollection().fetch()
    assert [p.id for p in projects] == [seeded.project_id]
    project = Project().fetch(seeded.project_id)
    assert project.name == "synthetic" and project.ontology == seeded.ontology_id
    assert project.numberOfImages == 2 and project.numberOfAnnotations == 8

    images = ImageInstanceCollection().fetch_with_filter("project", seeded.project_id)
    assert sorted(i.id for i in images) == sorted(i["id"] for i in seeded.images)
    image = ImageInstance().fetch(images[0].id)
    assert (image.width, image.height) == (96, 64) and image.project == seeded.project_id
    assert image.originalFilename.endswith(".png") and image.numberOfAnnotations == 4

    for collection in (
        TermCollection().fetch_with_filter("project", seeded.project_id),
        TermCollection().fetch_with_filter("ontology", seeded.ontology_id),
    ):
        assert {t.name: t.id for t in collection} == seeded.terms
    term = Term().fetch(seeded.terms["tumour"])
    assert term.ontology == seeded.ontology_id and term.color.startswith("#")
    ontology = Ontology().fetch(seeded.ontology_id)
    assert sorted(c["name"] for c in ontology.children) == ["stroma", "tumour"]


def test_create_project_ontology_term_and_conflicts(client, server):
    ontology = Ontology(name="lab").save()
    term = Term(name="gland", id_ontology=ontology.id, color="#00FF00").save()
    project = Project(name="lab project", id_ontology=ontology.id).save()
    assert project.id and term.id and Project().fetch(project.id).ontologyName == "lab"
    assert (
        _raw(server, "POST", "/api/project.json", {"name": "lab project", "ontology": ontology.id}).status_code == 409
    )
    assert _raw(server, "POST", "/api/term.json", {"name": "gland", "ontology": ontology.id}).status_code == 409
    assert project.delete() and _raw(server, "GET", f"/api/project/{project.id}.json").status_code == 404


def test_users_and_user_keys(client, server):
    assert (
        _raw(
            server, "POST", "/api/user.json", {"username": "alice", "firstname": "A", "lastname": "L", "email": "a@b.c"}
        ).status_code
        == 200
    )
    users = UserCollection().fetch()
    alice = next(u for u in users if u.username == "alice")
    assert not hasattr(alice, "privateKey") or alice.privateKey is None  # other users' keys are not listed
    keys = client.get(f"user/{alice.id}/keys.json")
    assert keys["publicKey"] and keys["privateKey"]
    assert User().fetch(alice.id).username == "alice"
    # A non-admin cannot create users.
    assert (
        _raw(
            server, "POST", "/api/user.json", {"username": "eve"}, keys=(keys["publicKey"], keys["privateKey"])
        ).status_code
        == 403
    )


# ---------------------------------------------------------------------- annotation listing
def test_annotation_listing_filters(client, seeded, server):
    tumour, stroma = seeded.terms["tumour"], seeded.terms["stroma"]
    first, second = (i["id"] for i in seeded.images)
    everything = AnnotationCollection(project=seeded.project_id, showTerm=True).fetch()
    assert len(everything) == 8
    assert [a.id for a in everything] == sorted((a.id for a in everything), reverse=True)  # newest first, as the core

    by_term = AnnotationCollection(project=seeded.project_id, terms=[tumour], showTerm=True).fetch()
    assert {a.id for a in by_term} == {a.id for a in seeded.annotations if a.term == "tumour"}
    assert all(a.term == [tumour] for a in by_term)
    # get_annotations (client utilities) sends term=30,31 in the singular parameter.
    assert len(AnnotationCollection(project=seeded.project_id, term=f"{tumour},{stroma}").fetch()) == 8

    assert {a.image for a in AnnotationCollection(project=seeded.project_id, image=first).fetch()} == {first}
    assert len(AnnotationCollection(project=seeded.project_id, images=[first, second]).fetch()) == 8
    # Empty lists (what the client sends for images=[]) mean "no filter".
    assert len(AnnotationCollection(project=seeded.project_id, images=[], users=[], terms=[]).fetch()) == 8
    assert len(AnnotationCollection(project=seeded.project_id, users=[server.admin["id"]]).fetch()) == 8
    assert len(AnnotationCollection(project=seeded.project_id, users=[999999999]).fetch()) == 0
    assert len(AnnotationCollection(project=seeded.project_id, reviewed=False).fetch()) == 8
    assert len(AnnotationCollection(project=seeded.project_id, reviewed=True).fetch()) == 0

    lonely = Annotation(location="POINT (50 30)", id_image=first, id_project=seeded.project_id).save()
    no_term = AnnotationCollection(project=seeded.project_id, noTerm=True).fetch()
    assert [a.id for a in no_term] == [lonely.id]
    AnnotationTerm(lonely.id, tumour).save()
    AnnotationTerm(lonely.id, stroma).save()
    multiple = AnnotationCollection(project=seeded.project_id, multipleTerm=True, showTerm=True).fetch()
    assert [a.id for a in multiple] == [lonely.id] and sorted(multiple[0].term) == sorted([tumour, stroma])

    # bbox: annotations intersecting a rectangle (Cytomine coordinates) or a WKT geometry.
    target = seeded.annotations[0]
    x0, y0, x1, y1 = target.box
    h = seeded.images[0]["height"]
    inside = AnnotationCollection(
        project=seeded.project_id, bbox=f"{x0 + 1},{h - y1 + 1},{x0 + 2},{h - y1 + 2}"
    ).fetch()
    assert target.id in {a.id for a in inside}
    far = AnnotationCollection(project=seeded.project_id, bbox="POLYGON ((-9 -9, -8 -9, -8 -8, -9 -8, -9 -9))").fetch()
    assert len(far) == 0
    # A filter on a missing project or image is a 404, as the core.
    assert _raw(server, "GET", "/api/annotation.json?project=123456789").status_code == 404
    assert _raw(server, "GET", f"/api/annotation.json?project={seeded.project_id}&image=123456789").status_code == 404


def test_annotation_listing_show_groups(client, seeded):
    basic = AnnotationCollection(project=seeded.project_id).fetch()[0]  # the client asks basic+meta only
    assert basic.cropURL.endswith(f"/api/userannotation/{basic.id}/crop.png") and basic.cropURL.startswith("http://")
    assert basic.location is None and basic.term is None

    full = AnnotationCollection(
        project=seeded.project_id,
        showWKT=True,
        showTerm=True,
        showGIS=True,
        showImage=True,
        showUser=True,
        showSlice=True,
    ).fetch()
    item = next(a for a in full if a.id == seeded.annotations[0].id)
    seeded_item = seeded.annotations[0]
    x0, y0, x1, y1 = seeded_item.box
    assert item.location.startswith("POLYGON") and item.term == [seeded_item.term_id]
    assert item.area == pytest.approx((x1 - x0) * (y1 - y0)) and item.areaUnit
    assert item.originalFilename == "image_00.png" and item.creator == "admin"
    assert item.image == seeded_item.image_id and item.project == seeded.project_id
    assert item.zStack == 0

    raw = AnnotationCollection(project=seeded.project_id, showDefault=True, hideTerm=True).fetch()[0]
    assert raw.term is None and raw.cropURL


def test_pagination_with_more_objects_than_a_page(client, seeded, server):
    # The client's fetch(max=N) loops on size // N pages: with 8 objects and N=4 it reads 2 pages.
    paged = AnnotationCollection(project=seeded.project_id).fetch(max=4)
    assert len(paged) == 8 and len({a.id for a in paged}) == 8
    body = _raw(server, "GET", f"/api/annotation.json?project={seeded.project_id}&max=3&offset=6").json()
    assert body["size"] == 8 and len(body["collection"]) == 2 and body["totalPages"] == 3 and body["offset"] == 6
    everything = _raw(server, "GET", f"/api/annotation.json?project={seeded.project_id}&max=0&offset=0").json()
    assert len(everything["collection"]) == 8 and everything["totalPages"] == 1
    ids = [a["id"] for a in everything["collection"]]
    pages = [
        a["id"]
        for offset in (0, 3, 6)
        for a in _raw(server, "GET", f"/api/annotation.json?project={seeded.project_id}&max=3&offset={offset}").json()[
            "collection"
        ]
    ]
    assert pages == ids
    assert _raw(server, "GET", f"/api/annotation.json?project={seeded.project_id}&max=-1").status_code == 400


# ---------------------------------------------------------------------- creating annotations and terms
def test_create_single_and_bulk_annotations(client, seeded, server):
    image = seeded.images[0]
    tumour = seeded.terms["tumour"]
    single = Annotation(
        location=box_in_cytomine(10, 10, 20, 30, image["height"]).wkt,
        id_image=image["id"],
        id_terms=[tumour],
        id_project=seeded.project_id,
    ).save()
    assert single.id and single.term == [tumour] and single.project == seeded.project_id
    fetched = Annotation().fetch(single.id)
    # Image rows 10..30 of a 64-pixel-high image are Cytomine y 34..54 (bottom-left origin).
    assert shapely.from_wkt(fetched.location).equals(shapely.box(10, 34, 20, 54)) and fetched.term == [tumour]
    assert fetched.area == 200 and fetched.centroid["x"] == 15

    bulk = AnnotationCollection()
    for k in range(20):
        bulk.append(
            Annotation(
                location=f"POINT ({k + 2} {k + 2})",
                id_image=image["id"],
                id_terms=[tumour],
                id_project=seeded.project_id,
            )
        )
    assert bulk.save(chunk=7, n_workers=3) is True  # three concurrent chunked POSTs of JSON arrays
    assert bulk.save(chunk=None) is True
    assert len(AnnotationCollection(project=seeded.project_id, image=image["id"]).fetch()) == 4 + 1 + 40


def test_invalid_annotations_are_refused(client, seeded, server):
    image = seeded.images[0]["id"]
    other_ontology = Ontology(name="other").save()
    foreign = Term(name="foreign", id_ontology=other_ontology.id).save()
    cases = [
        ({"location": "POLYGON((0 0, 10 0", "image": image}, 400, "not readable WKT"),
        ({"location": "POLYGON((0 0, 10 10, 10 0, 0 10, 0 0))", "image": image}, 400, "not valid"),
        ({"location": "POLYGON((200 200, 300 200, 300 300, 200 300, 200 200))", "image": image}, 400, "dimension"),
        ({"location": "POINT (5 5)", "image": image, "term": [foreign.id]}, 400, "not in the ontology"),
        ({"location": "POINT (5 5)", "image": 987654321}, 404, "ImageInstance 987654321 not found"),
        ({"location": "POINT (5 5)"}, 400, "slice or image"),
    ]
    for body, status, message in cases:
        response = _raw(server, "POST", "/api/annotation.json", body)
        assert response.status_code == status, body
        assert message in response.json()["errors"]
    # The client returns False on a refused save (only HTTP 200 counts as success).
    assert Annotation(location="POINT (5 5)", id_image=image, id_terms=[foreign.id]).save() is False
    # A geometry crossing the image border is cut to the image, as the core does.
    clipped = Annotation(location="POLYGON((90 10, 120 10, 120 20, 90 20, 90 10))", id_image=image).save()
    assert shapely.from_wkt(Annotation().fetch(clipped.id).location).equals(shapely.box(90, 10, 96, 20))


def test_bulk_partial_failure_is_reported_in_the_body(seeded, server):
    image = seeded.images[0]["id"]
    response = _raw(
        server,
        "POST",
        "/api/annotation.json",
        [{"location": "POINT (5 5)", "image": image}, {"location": "garbage", "image": image}],
    )
    assert response.status_code == 200  # as the core: the outcome is in the body
    body = response.json()
    assert body["status"] == 206 and len(body["data"]["created"]) == 1 and "item 1" in body["data"]["errors"][0]


def test_annotation_update_and_delete(client, seeded):
    annotation = Annotation().fetch(seeded.annotations[0].id)
    annotation.location = "POLYGON ((1 1, 11 1, 11 11, 1 11, 1 1))"
    updated = annotation.update()
    assert updated.location == "POLYGON ((1 1, 11 1, 11 11, 1 11, 1 1))" and updated.term == [
        seeded.annotations[0].term_id
    ]
    assert annotation.delete() is True
    assert Annotation().fetch(seeded.annotations[0].id) is False


def test_add_and_replace_terms(client, seeded, server):
    annotation_id = seeded.annotations[0].id
    tumour, stroma = seeded.terms["tumour"], seeded.terms["stroma"]
    assert AnnotationTerm(annotation_id, stroma).save().term == stroma
    assert sorted(Annotation().fetch(annotation_id).term) == sorted([tumour, stroma])
    # Adding the same term twice is a conflict (409): the client's save returns False.
    assert AnnotationTerm(annotation_id, stroma).save() is False
    replaced = client.post(f"annotation/{annotation_id}/term/{tumour}/clearBefore.json")
    assert replaced["annotationterm"]["term"] == tumour
    assert Annotation().fetch(annotation_id).term == [tumour]
    assert AnnotationTerm(annotation_id, tumour).delete(id=-1) is True
    assert Annotation().fetch(annotation_id).term == []
    assert _raw(server, "POST", f"/api/annotation/{annotation_id}/term/123456789.json").status_code == 404


def test_review_listing(client, seeded):
    annotation_id = seeded.annotations[1].id
    reviewed = Annotation(id=annotation_id).review(id_terms=[seeded.terms["stroma"]])
    reviewed_id = reviewed["reviewedannotation"]["id"]
    listed = AnnotationCollection(project=seeded.project_id, reviewed=True, showTerm=True).fetch()
    assert [a.id for a in listed] == [reviewed_id] and listed[0].term == [seeded.terms["stroma"]]
    assert listed[0].cropURL.endswith(f"/api/reviewedannotation/{reviewed_id}/crop.png")
    assert Annotation().fetch(annotation_id).reviewed is True
    assert len(AnnotationCollection(project=seeded.project_id, notReviewedOnly=True).fetch()) == 7


# ---------------------------------------------------------------------- properties and files
def test_properties_on_project_annotation_and_image(client, seeded):
    project = Project().fetch(seeded.project_id)
    annotation = Annotation().fetch(seeded.annotations[0].id)
    image = ImageInstance().fetch(seeded.images[0]["id"])
    for obj in (project, annotation, image):
        prop = Property(obj, key="stain", value="H&E").save()
        assert prop.id and prop.domainIdent == obj.id
        listed = PropertyCollection(obj).fetch()
        assert listed.as_dict()["stain"].value == "H&E"
        by_key = Property(obj).fetch(key="stain")
        assert by_key.id == prop.id
        prop.value = "IHC"
        assert prop.update().value == "IHC"
        assert Property(obj, key="stain", value="again").save() is False  # duplicate key: 409
        assert prop.delete() is True
        assert len(PropertyCollection(obj).fetch()) == 0


def test_attached_files_round_trip(client, seeded, tmp_path):
    project = Project().fetch(seeded.project_id)
    source = tmp_path / "sub" / "model.bin"
    source.parent.mkdir()
    payload = bytes(range(256)) * 100
    source.write_bytes(payload)
    uploaded = AttachedFile(project, filename=str(source)).upload()  # the part's filename carries the folder
    assert uploaded.id and uploaded.filename == "model.bin" and uploaded.url.endswith(f"/{uploaded.id}/download")
    renamed = AttachedFile(project, file=str(source), filename="weights.npz").upload()
    assert renamed.filename == "weights.npz"
    files = AttachedFileCollection(project).fetch()
    assert sorted(f.filename for f in files) == ["model.bin", "weights.npz"]
    target = tmp_path / "downloaded.bin"
    assert files[0].download(str(target), override=True)
    assert target.read_bytes() == payload


def test_missing_objects_are_404_and_no_cache_headers(server, seeded):
    for path in (
        "/api/project/424242.json",
        "/api/annotation/424242.json",
        "/api/imageinstance/424242.json",
        "/api/term/424242.json",
        "/api/job/424242.json",
        "/api/software/424242.json",
        "/api/userannotation/424242/crop.png",
        "/api/nothing/here.json",
    ):
        response = _raw(server, "GET", path)
        assert response.status_code == 404, path
        assert response.json()["success"] is False
    response = _raw(server, "GET", f"/api/userannotation/{seeded.annotations[0].id}/crop.png")
    assert response.status_code == 200
    download = _raw(server, "GET", f"/api/imageinstance/{seeded.images[0]['id']}/download")
    for r in (response, download):
        assert not {"ETag", "Last-Modified"} & set(r.headers) and "max-age" not in r.headers.get("Cache-Control", "")


def test_unknown_body_keys_are_ignored_and_booleans_case_insensitive(seeded, server):
    image = seeded.images[0]["id"]
    response = _raw(
        server,
        "POST",
        "/api/annotation.json",
        {"location": "POINT (3 3)", "image": image, "class_": "x", "filenames": ["a"], "cropURL": "junk"},
    )
    assert response.status_code == 200 and response.json()["annotation"]["id"]
    for value in ("True", "true", "TRUE"):
        body = _raw(server, "GET", f"/api/annotation.json?project={seeded.project_id}&showWKT={value}").json()
        assert "location" in body["collection"][0]


def test_algo_annotation_terms_with_rate(server, seeded):
    """A job user's term on a user annotation is an algo annotation term with its rate."""
    store = server.store
    software = store.software.create({"name": "predictor"})
    job, user_job = store.jobs.create(seeded.project_id, software["id"], server.admin)
    keys = (user_job["public_key"], user_job["private_key"])
    annotation = seeded.annotations[0]
    response = _raw(
        server,
        "POST",
        f"/api/annotation/{annotation.id}/term/{seeded.terms['stroma']}.json",
        {"annotation": annotation.id, "term": seeded.terms["stroma"], "rate": 0.8},
        keys=keys,
    )
    assert response.status_code == 200
    body = response.json()["algoannotationterm"]
    assert body["rate"] == 0.8 and body["userJob"] == user_job["id"]
    suggested = _raw(
        server, "GET", f"/api/annotation.json?project={seeded.project_id}&showAlgo=true&jobForTermAlgo={job['id']}"
    ).json()["collection"]
    assert [(s["id"], s["idTerm"], s["rate"]) for s in suggested] == [(annotation.id, seeded.terms["stroma"], 0.8)]
    # An out-of-range rate is refused.
    assert (
        _raw(
            server,
            "POST",
            f"/api/annotation/{annotation.id}/term/{seeded.terms['tumour']}.json",
            {"rate": 3},
            keys=keys,
        ).status_code
        == 400
    )
    # A job user creates algo annotations, listed with includeAlgo or the job's user.
    created = _raw(
        server,
        "POST",
        "/api/annotation.json",
        {"location": "POINT (9 9)", "image": annotation.image_id, "term": [seeded.terms["tumour"]], "rate": 0.9},
        keys=keys,
    )
    algo_id = created.json()["annotation"]["id"]
    assert created.json()["annotation"]["class"].endswith("AlgoAnnotation")
    algo = _raw(
        server,
        "GET",
        f"/api/annotation.json?project={seeded.project_id}&users={user_job['id']}&showMeta=true&showTerm=true",
    )
    assert [a["id"] for a in algo.json()["collection"]] == [algo_id]
    assert algo.json()["collection"][0]["cropURL"].endswith(f"/api/algoannotation/{algo_id}/crop.png")
    by_job = _raw(server, "GET", f"/api/annotation.json?project={seeded.project_id}&job={job['id']}").json()
    assert [a["id"] for a in by_job["collection"]] == [algo_id]
    included = _raw(server, "GET", f"/api/annotation.json?project={seeded.project_id}&includeAlgo=true").json()
    assert included["size"] == 9
    # A job cannot alter the annotations it learns from.
    assert _raw(server, "DELETE", f"/api/annotation/{annotation.id}.json", keys=keys).status_code == 403
    assert _raw(server, "DELETE", f"/api/annotation/{algo_id}.json", keys=keys).status_code == 200
    assert AlgoAnnotationTerm  # the client model used by the apps (exercised end to end in test_launcher)
