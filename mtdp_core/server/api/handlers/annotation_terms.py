"""Terms of annotations (people's and jobs'), and reviews."""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers.annotations import algo_annotation_term, annotation, annotation_term
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.domain import Row
from mtdp_core.server.errors import BadRequest


def _on_annotation(ctx: RequestContext, annotation_id: int, *, write: bool = False) -> Row:
    row = ctx.store.annotations.get(annotation_id)
    access.require_project_access(ctx, row["project_id"], write=write)
    return row


def list_terms(ctx: RequestContext, annotation_id: int, user_id: int | None = None) -> JSON:
    row, terms = ctx.store.annotation_terms.list(annotation_id, user_id)
    access.require_project_access(ctx, row["project_id"])
    if row["kind"] == "algo":
        return ctx.page([algo_annotation_term({**t, "annotation_kind": "algo"}) for t in terms])
    return ctx.page([annotation_term(t) for t in terms])


def add_term(ctx: RequestContext, annotation_id: int, term_id: int) -> JSON:
    """A person's term; a job user's POST adds an algo term (``rate``, ``expectedTerm`` in the body)."""
    _on_annotation(ctx, annotation_id, write=True)
    user = ctx.user
    if user["algo"]:
        data = ctx.json_object() if ctx.has_body() else {}
        row = ctx.store.annotation_terms.add_algo(
            annotation_id, term_id, user, expected_term=data.get("expectedTerm"), rate=data.get("rate")
        )
        # Under both keys: the client's AlgoAnnotationTerm reads the first, AnnotationTerm the second.
        message = f"Algo term {term_id} added to annotation {annotation_id}"
        body = algo_annotation_term(row)
        return command(["algoannotationterm", "annotationterm"], body, message, "AddAlgoAnnotationTermCommand")
    row = ctx.store.annotation_terms.add(annotation_id, term_id, user)
    message = f"Term {term_id} added to annotation {annotation_id}"
    return command("annotationterm", annotation_term(row), message, "AddAnnotationTermCommand")


def replace_terms(ctx: RequestContext, annotation_id: int, term_id: int) -> JSON:
    """``clearBefore``: the caller's terms (everyone's with ``clearForAll``) replaced by this one."""
    access.require_person(ctx, "delete user terms from a user annotation (clearBefore)", error=BadRequest)
    _on_annotation(ctx, annotation_id, write=True)
    clear = "all" if ctx.arg_bool("clearForAll") else "user"
    row = ctx.store.annotation_terms.add(annotation_id, term_id, ctx.user, clear=clear)
    message = f"Term {term_id} set on annotation {annotation_id}"
    return command("annotationterm", annotation_term(row), message, "AddAnnotationTermCommand")


def get_term(ctx: RequestContext, annotation_id: int, term_id: int, user_id: int | None = None) -> JSON:
    row = ctx.store.annotation_terms.get(annotation_id, term_id, user_id)
    _on_annotation(ctx, annotation_id)
    return algo_annotation_term(row) if row.get("algo") else annotation_term(row)


def delete_term(ctx: RequestContext, annotation_id: int, term_id: int, user_id: int | None = None) -> JSON:
    owner = user_id if user_id is not None else ctx.user["id"]
    access.require_term_owner(ctx, owner)
    row = ctx.store.annotation_terms.delete(annotation_id, term_id, owner, check=access.project_write_check(ctx))
    message = f"Term {term_id} removed from annotation {annotation_id}"
    return command("annotationterm", annotation_term(row), message, "DeleteAnnotationTermCommand")


def review(ctx: RequestContext, annotation_id: int) -> JSON:
    data = ctx.body()
    _on_annotation(ctx, annotation_id, write=True)
    row = ctx.store.annotation_terms.review(
        annotation_id, ctx.user, data.get("terms") if isinstance(data, dict) else None
    )
    message = f"Annotation {annotation_id} reviewed"
    return command(
        ["reviewedannotation", "annotation"], annotation(row, ctx.base_url), message, "AddReviewedAnnotationCommand"
    )


def unreview(ctx: RequestContext, annotation_id: int) -> JSON:
    row = ctx.store.annotation_terms.unreview(
        annotation_id, check=lambda copy: access.require_annotation_write(ctx, copy)
    )
    message = f"Review of annotation {annotation_id} removed"
    body = annotation(row, ctx.base_url)
    return command(["reviewedannotation", "annotation"], body, message, "DeleteReviewedAnnotationCommand")
