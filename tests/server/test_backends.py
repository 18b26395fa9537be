"""The store: persistence, identifiers, thread safety and domain rules."""

from __future__ import annotations

import stat
import threading

import pytest
from cytomine.models import AnnotationCollection, Project, ProjectCollection

from mtdp_core.errors import ConfigurationError
from mtdp_core.server.app import LocalCytomine, read_admin_keys
from mtdp_core.server.backends import AnnotationQuery, CytomineStore
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.domain import parse_id_list
from mtdp_core.server.errors import BadRequest, Conflict, Forbidden, NotFound
from mtdp_core.server.testing import seed_synthetic_project


def test_data_survive_a_restart_and_keys_are_kept(tmp_path):
    data = tmp_path / "data"
    with LocalCytomine(data, config=ServerConfig(log_requests=False)) as first:
        seeded = seed_synthetic_project(first, tmp_path / "img")
        keys = (first.public_key, first.private_key)
        first.connect()
        Project(name="made over http").save()
    keys_file = data / "admin-keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert read_admin_keys(data)["private_key"] == keys[1]
    assert not (data / "server.json").exists()  # removed at stop
    with LocalCytomine(data, config=ServerConfig(log_requests=False)) as second:
        assert (second.public_key, second.private_key) == keys
        second.connect()
        assert sorted(p.name for p in ProjectCollection().fetch()) == ["made over http", "synthetic"]
        assert len(AnnotationCollection(project=seeded.project_id).fetch()) == 8


def test_admin_keys_can_be_imposed(tmp_path):
    with LocalCytomine(tmp_path, public_key="pub-1", private_key="priv-1") as server:
        assert server.connect().current_user.username == "admin"
    with LocalCytomine(tmp_path, public_key="pub-2", private_key="priv-2") as server:
        assert server.public_key == "pub-2" and server.connect("pub-2", "priv-2").current_user.username == "admin"


def test_identifiers_are_unique_across_domains(server, seeded):
    ids = [
        seeded.project_id,
        seeded.ontology_id,
        *seeded.terms.values(),
        *(i["id"] for i in seeded.images),
        *(i["slice_id"] for i in seeded.images),
        *(a.id for a in seeded.annotations),
    ]
    assert len(ids) == len(set(ids))


def test_concurrent_writes_from_threads_keep_the_store_consistent(tmp_path):
    store = CytomineStore(tmp_path / "db.sqlite3", tmp_path / "files")
    admin = store.users.ensure_admin()
    ontology = store.ontologies.create("o")
    term = store.ontologies.create_term("t", ontology["id"])
    project = store.projects.create("p", ontology["id"])
    from PIL import Image

    Image.new("RGB", (50, 50)).save(tmp_path / "i.png")
    image = store.images.add(tmp_path / "i.png", project["id"])
    errors = []

    def work(k):
        try:
            for j in range(25):
                store.annotations.create(
                    {"image": image["id"], "location": f"POINT ({k + 1} {j + 1})", "term": [term["id"]]}, admin
                )
                store.annotations.list(AnnotationQuery(project=project["id"]), 0, 10)
        except Exception as exc:  # noqa: BLE001 - any failure of a thread is reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows, total = store.annotations.list(AnnotationQuery(project=project["id"], terms=[term["id"]]))
    assert total == 200 and len({r["id"] for r in rows}) == 200
    store.close()


def test_domain_rules(server, seeded):
    store = server.store
    with pytest.raises(Conflict):
        store.users.create("admin")
    with pytest.raises(BadRequest, match="username"):
        store.users.create("two words")
    with pytest.raises(NotFound):
        store.projects.get(123456789)
    with pytest.raises(BadRequest, match="still used by project"):
        store.ontologies.delete(seeded.ontology_id)
    with pytest.raises(BadRequest, match="comma-separated"):
        parse_id_list("1,a")
    assert parse_id_list("3_4") == [3, 4] and parse_id_list("") is None and parse_id_list([]) is None
    # Deleting a project removes its images and annotations.
    store.projects.delete(seeded.project_id)
    assert store.annotations.list(AnnotationQuery())[1] == 0


def test_a_write_across_backends_is_all_or_nothing(server):
    store = server.store
    with pytest.raises(RuntimeError), store.transaction():
        ontology = store.ontologies.create("kept only with its project")
        store.projects.create("half-made", ontology["id"])
        raise RuntimeError("failure after two backends wrote")
    assert store.projects.find_by_name("half-made") is None
    assert all(o["name"] != "kept only with its project" for o in store.ontologies.list())


def test_bulk_creation_runs_the_callers_check_on_each_item(server, seeded):
    store, admin = server.store, server.admin
    refused_image = seeded.images[1]["id"]

    def check(image):
        if image["id"] == refused_image:
            raise Forbidden(f"no access to image {image['id']}")

    location = "POLYGON ((1 1, 9 1, 9 9, 1 9, 1 1))"
    items = [{"image": i["id"], "location": location} for i in seeded.images]
    created, errors = store.annotations.create_many(items, admin, check=check)
    assert len(created) == 1 and store.annotations.get(created[0])["image_id"] == seeded.images[0]["id"]
    assert errors == [f"item 1: no access to image {refused_image}"]


def test_public_queries_of_algo_annotations_and_terms(server, seeded):
    store = server.store
    software = store.software.create({"name": "predictor"})
    job, job_user = store.jobs.create(seeded.project_id, software["id"], server.admin)
    target = seeded.annotations[0]
    store.annotation_terms.add_algo(target.id, target.term_id, job_user, rate=0.25)
    store.annotations.create({"image": target.image_id, "location": "POINT (5 5)", "term": [target.term_id]}, job_user)
    assert store.annotations.count(AnnotationQuery(kind="algo")) == 1
    assert store.annotations.count(AnnotationQuery(kind="user", project=seeded.project_id)) == 8
    terms = store.annotation_terms.list_algo(job_user["id"])
    assert (terms[0]["annotation_id"], terms[0]["rate"]) == (target.id, 0.25) and len(terms) == 2
    assert store.annotation_terms.list_algo(server.admin["id"]) == []
    assert store.users.job_user(job["id"])["id"] == job_user["id"]


def test_databases_of_the_previous_schema_are_migrated(tmp_path):
    """Schema 1 had no project members: opening it makes each project's creator its manager."""
    path = tmp_path / "cytomine.sqlite3"
    store = CytomineStore(path)
    admin = store.users.ensure_admin()
    alice = store.users.create("alice")
    project = store.projects.create("old", None, alice["id"])
    with store.transaction() as db:
        db.execute("DELETE FROM project_member")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    store.close()
    store = CytomineStore(path)
    try:
        assert store.projects.role(project["id"], alice["id"]) == "manager"
        assert store.projects.role(project["id"], admin["id"]) is None
        assert store.db.scalar("SELECT value FROM meta WHERE key = 'schema'") == "2"
        with store.transaction() as db:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    finally:
        store.close()
    with pytest.raises(ConfigurationError, match="schema version 99"):
        CytomineStore(path)
