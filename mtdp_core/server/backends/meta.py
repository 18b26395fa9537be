"""What can be attached to any domain object: properties (key/value), attached files and a
description. The object is named by its class (``be.cytomine.project.Project``, a short form
such as ``project``, or ``AnnotationDomain`` for any annotation) and its id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, BinaryIO

from mtdp_core.server.backends.database import Database, Files
from mtdp_core.server.domain import ANNOTATION_KINDS, CLASS_NAMES, Row, domain_key, file_name, now_ms, short_class
from mtdp_core.server.errors import BadRequest, Conflict, NotFound

#: Domain classes that can carry properties and files, by :func:`domain_key`, and their table.
DOMAIN_TABLES = {
    "project": "project",
    "ontology": "ontology",
    "term": "term",
    "imageinstance": "image_instance",
    "abstractimage": "abstract_image",
    "software": "software",
    "softwareparameter": "software_parameter",
    "job": "job",
    "jobdata": "job_data",
}
ANNOTATION_KEYS = ("annotation", "annotationdomain", "userannotation", "algoannotation", "reviewedannotation")
USER_KEYS = ("user", "secuser", "userjob")
#: How to find what a domain object belongs to, by the key of its canonical class: (scope, SQL
#: selecting the scope's id from the object's id).
OWNER_QUERIES = {
    "project": ("project", "SELECT id FROM project WHERE id = ?"),
    "imageinstance": ("project", "SELECT project_id FROM image_instance WHERE id = ?"),
    "userannotation": ("project", "SELECT project_id FROM annotation WHERE id = ?"),
    "algoannotation": ("project", "SELECT project_id FROM annotation WHERE id = ?"),
    "reviewedannotation": ("project", "SELECT project_id FROM annotation WHERE id = ?"),
    "job": ("project", "SELECT project_id FROM job WHERE id = ?"),
    "jobdata": ("project", "SELECT j.project_id FROM job_data d JOIN job j ON j.id = d.job_id WHERE d.id = ?"),
    "ontology": ("ontology", "SELECT id FROM ontology WHERE id = ?"),
    "term": ("ontology", "SELECT ontology_id FROM term WHERE id = ?"),
    "abstractimage": ("abstractimage", "SELECT id FROM abstract_image WHERE id = ?"),
    "software": ("software", "SELECT id FROM software WHERE id = ?"),
    "softwareparameter": ("software", "SELECT software_id FROM software_parameter WHERE id = ?"),
    "user": ("user", "SELECT id FROM sec_user WHERE id = ?"),
    "userjob": ("user", "SELECT id FROM sec_user WHERE id = ?"),
}


@dataclass(frozen=True)
class DomainOwner:
    """What a domain object belongs to, for the access rules: ``scope`` is ``project``,
    ``ontology``, ``abstractimage``, ``software`` or ``user``, and ``ident`` that object's id
    (e.g. the project of an annotation, the ontology of a term)."""

    class_name: str
    scope: str
    ident: int


@dataclass(eq=False)
class MetaBackend:
    db: Database
    files: Files

    def resolve_domain(self, class_name: str, ident: int) -> str:
        """The canonical class name of an existing domain object; 404 when it does not exist."""
        key = domain_key(class_name)
        if key in ANNOTATION_KEYS:
            kind = self.db.scalar("SELECT kind FROM annotation WHERE id = ?", (ident,))
            if kind is None:
                raise NotFound(f"Annotation {ident} not found")
            return CLASS_NAMES[ANNOTATION_KINDS[kind]]
        if key in USER_KEYS:
            algo = self.db.get("sec_user", ident, "User")["algo"]
            return CLASS_NAMES["userjob" if algo else "user"]
        if key not in DOMAIN_TABLES:
            raise BadRequest(
                f"Unsupported domain class {class_name!r}: use a project, image, annotation, job, software, "
                "term, ontology or user"
            )
        if not self.db.exists(f"SELECT 1 FROM {DOMAIN_TABLES[key]} WHERE id = ?", (ident,)):
            raise NotFound(f"{short_class(class_name)} {ident} not found")
        return CLASS_NAMES[key]

    def owner(self, class_name: str, ident: int) -> DomainOwner:
        """What an existing domain object belongs to (404 when it does not exist)."""
        canonical = self.resolve_domain(class_name, ident)
        scope, sql = OWNER_QUERIES[domain_key(canonical)]
        return DomainOwner(canonical, scope, int(self.db.scalar(sql, (ident,))))

    # ------------------------------------------------------------------ properties
    def add_property(self, class_name: str, ident: int, key: object, value: object) -> Row:
        canonical = self.resolve_domain(class_name, ident)
        if not isinstance(key, str) or not key.strip():
            raise BadRequest(f"Invalid property key {key!r}: give a non-empty key")
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        elif value is not None and not isinstance(value, str):
            value = str(value)
        with self.db.transaction() as db:
            if self._property_id(canonical, ident, key) is not None:
                raise Conflict(f"Property {key!r} already exists on {short_class(canonical)} {ident}: update it")
            pid = self.db.allocate_ids()
            db.execute(
                "INSERT INTO property (id, domain_class, domain_ident, key, value, created) VALUES (?, ?, ?, ?, ?, ?)",
                (pid, canonical, ident, key, value, now_ms()),
            )
        return self.get_property(pid)

    def get_property(self, property_id: int) -> Row:
        return self.db.get("property", property_id, "Property")

    def get_property_of(self, class_name: str, ident: int, property_id: int) -> Row:
        """Property ``property_id``, 404 unless it is on that object."""
        canonical = self.resolve_domain(class_name, ident)
        row = self.get_property(property_id)
        if row["domain_ident"] != ident or row["domain_class"] != canonical:
            raise NotFound(f"Property {property_id} not found on {short_class(canonical)} {ident}")
        return row

    def find_property(self, class_name: str, ident: int, key: str) -> Row:
        canonical = self.resolve_domain(class_name, ident)
        pid = self._property_id(canonical, ident, key)
        if pid is None:
            raise NotFound(f"Property {key!r} not found on {short_class(canonical)} {ident}")
        return self.get_property(pid)

    def list_properties(self, class_name: str, ident: int) -> list[Row]:
        canonical = self.resolve_domain(class_name, ident)
        return self.db.all(
            "SELECT * FROM property WHERE domain_class = ? AND domain_ident = ? ORDER BY id", (canonical, ident)
        )

    def update_property(self, property_id: int, data: dict[str, Any]) -> Row:
        prop = self.get_property(property_id)
        key = data.get("key", prop["key"])
        value = data.get("value", prop["value"])
        if not isinstance(key, str) or not key.strip():
            raise BadRequest(f"Invalid property key {key!r}")
        with self.db.transaction() as db:
            if self._property_id(prop["domain_class"], prop["domain_ident"], key) not in (None, property_id):
                raise Conflict(f"Property {key!r} already exists on this object")
            db.execute(
                "UPDATE property SET key = ?, value = ?, updated = ? WHERE id = ?",
                (key, None if value is None else str(value), now_ms(), property_id),
            )
        return self.get_property(property_id)

    def delete_property(self, property_id: int) -> Row:
        prop = self.get_property(property_id)
        self.db.delete("property", property_id)
        return prop

    def _property_id(self, canonical: str, ident: int, key: str) -> int | None:
        return self.db.scalar(
            "SELECT id FROM property WHERE domain_class = ? AND domain_ident = ? AND key = ?", (canonical, ident, key)
        )

    # ------------------------------------------------------------------ attached files
    def add_attached_file(
        self, class_name: str, ident: int, filename: str, data: bytes | BinaryIO, key: str | None = None
    ) -> Row:
        """Attach a file (its bytes, or a binary stream) to a domain object."""
        canonical = self.resolve_domain(class_name, ident)
        fid = self.db.allocate_ids()
        path = self.files.save("attachedfiles", fid, file_name(filename, "file"), data)
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO attached_file (id, domain_class, domain_ident, filename, storage, size, key, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (fid, canonical, ident, path.name, str(path), path.stat().st_size, key, now_ms()),
            )
        return self.get_attached_file(fid)

    def get_attached_file(self, file_id: int) -> Row:
        return self.db.get("attached_file", file_id, "AttachedFile")

    def list_attached_files(self, class_name: str | None = None, ident: int | None = None) -> list[Row]:
        """The files of one object, or (no class) every attached file."""
        if class_name is None:
            return self.db.all("SELECT * FROM attached_file ORDER BY id")
        canonical = self.resolve_domain(class_name, ident)  # type: ignore[arg-type]
        return self.db.all(
            "SELECT * FROM attached_file WHERE domain_class = ? AND domain_ident = ? ORDER BY id", (canonical, ident)
        )

    def delete_attached_file(self, file_id: int) -> Row:
        row = self.get_attached_file(file_id)
        self.db.delete("attached_file", file_id)
        self.files.remove(row["storage"])
        return row

    # ------------------------------------------------------------------ descriptions
    def get_description(self, class_name: str, ident: int) -> Row:
        canonical = self.resolve_domain(class_name, ident)
        return self.db.require(
            "SELECT * FROM description WHERE domain_class = ? AND domain_ident = ?",
            (canonical, ident),
            f"Description of {short_class(canonical)} {ident} not found",
        )

    def set_description(self, class_name: str, ident: int, data: object) -> Row:
        """Create or replace the description of an object."""
        canonical = self.resolve_domain(class_name, ident)
        text = "" if data is None else str(data)
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT id FROM description WHERE domain_class = ? AND domain_ident = ?", (canonical, ident)
            ).fetchone()
            if row:
                db.execute("UPDATE description SET data = ?, updated = ? WHERE id = ?", (text, now_ms(), row[0]))
            else:
                db.execute(
                    "INSERT INTO description (id, domain_class, domain_ident, data, created) VALUES (?, ?, ?, ?, ?)",
                    (self.db.allocate_ids(), canonical, ident, text, now_ms()),
                )
        return self.get_description(canonical, ident)

    def delete_description(self, class_name: str, ident: int) -> Row:
        row = self.get_description(class_name, ident)
        self.db.delete("description", row["id"])
        return row
