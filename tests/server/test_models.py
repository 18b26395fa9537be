"""The store: persistence, identifiers, thread safety and domain rules."""

from __future__ import annotations

import stat
import threading

import pytest
from cytomine.models import AnnotationCollection, Project, ProjectCollection

from mtdp_core.server.app import LocalCytomine, read_admin_keys
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.errors import BadRequest, Conflict, NotFound
from mtdp_core.server.models import AnnotationQuery, CytomineStore, parse_id_list
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
    admin = store.ensure_admin()
    ontology = store.create_ontology("o")
    term = store.create_term("t", ontology["id"])
    project = store.create_project("p", ontology["id"])
    from PIL import Image

    Image.new("RGB", (50, 50)).save(tmp_path / "i.png")
    image = store.add_image(tmp_path / "i.png", project["id"])
    errors = []

    def work(k):
        try:
            for j in range(25):
                store.create_annotation(
                    {"image": image["id"], "location": f"POINT ({k + 1} {j + 1})", "term": [term["id"]]}, admin
                )
                store.list_annotations(AnnotationQuery(project=project["id"]), 0, 10)
        except Exception as exc:  # noqa: BLE001 - any failure of a thread is reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows, total = store.list_annotations(AnnotationQuery(project=project["id"], terms=[term["id"]]))
    assert total == 200 and len({r["id"] for r in rows}) == 200
    store.close()


def test_domain_rules(server, seeded):
    store = server.store
    with pytest.raises(Conflict):
        store.create_user("admin")
    with pytest.raises(BadRequest, match="username"):
        store.create_user("two words")
    with pytest.raises(NotFound):
        store.get_project(123456789)
    with pytest.raises(BadRequest, match="still used by project"):
        store.delete_ontology(seeded.ontology_id)
    with pytest.raises(BadRequest, match="comma-separated"):
        parse_id_list("1,a")
    assert parse_id_list("3_4") == [3, 4] and parse_id_list("") is None and parse_id_list([]) is None
    # Deleting a project removes its images and annotations.
    store.delete_project(seeded.project_id)
    assert store.list_annotations(AnnotationQuery())[1] == 0
