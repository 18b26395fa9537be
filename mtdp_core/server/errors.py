"""Errors of the local Cytomine-compatible server, each with the HTTP status a real core uses.

The backends (and the API's access rules) raise them; the Flask application (``api.app``) turns
them into the JSON error body Cytomine sends: ``{"success": false, "errors": message, "message": message}``.
"""

from __future__ import annotations

from mtdp_core.errors import MtdpError


class ServerError(MtdpError):
    """Base class: a request the server refuses, with its HTTP status code."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ServerError):
    """The request is malformed or its content is invalid (Cytomine's WrongArgumentException)."""

    status = 400


class Unauthorized(ServerError):
    """No credentials, an unknown public key or a bad signature."""

    status = 401


class Forbidden(ServerError):
    """Authenticated, but not allowed to do that (e.g. a non-admin creating users)."""

    status = 403


class NotFound(ServerError):
    """The object does not exist (Cytomine's ObjectNotFoundException)."""

    status = 404


class PayloadTooLarge(ServerError):
    """The request body is larger than the server accepts."""

    status = 413


class Conflict(ServerError):
    """The object already exists (Cytomine's AlreadyExistException)."""

    status = 409
