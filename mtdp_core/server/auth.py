"""Cytomine's request signature (HMAC-SHA1 over a few headers), both client generations.

Every request carries ``authorization: CYTOMINE {public_key}:{base64(hmac_sha1(private_key, token))}``.
The signed token depends on the client:

- client <= 3.1.0 (and ULiege 2.x), checked by legacy cores (Grails, Spring):
  ``"{method}\\n{content_md5}\\n{content_type}\\n{date}\\n{path_and_query}"``;
- client 4.x, checked by the modern core: ``"{method}\\n{content_md5}\\n{content_type}\\n{date}"``.

A real core accepts only one of the two; this server accepts both so that both client
generations work against it. Like the Java ``ApiKeyFilter``, verification retries with an
empty content type and does not check clock skew.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid

AUTH_SCHEME = "CYTOMINE"


def generate_keys() -> tuple[str, str]:
    """A new (public, private) key pair, in Cytomine's format (UUIDs)."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16))), str(uuid.UUID(bytes=secrets.token_bytes(16)))


def signature(private_key: str, token: str) -> str:
    digest = hmac.new(private_key.encode("utf-8"), token.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def legacy_token(method: str, content_md5: str, content_type: str, date: str, path_and_query: str) -> str:
    """What clients <= 3.1.0 sign: the headers then the request path with its query string."""
    return f"{method}\n{content_md5}\n{content_type}\n{date}\n{path_and_query}"


def modern_token(method: str, content_md5: str, content_type: str, date: str) -> str:
    """What clients 4.x sign: the headers only."""
    return f"{method}\n{content_md5}\n{content_type}\n{date}"


def parse_authorization(header: str | None) -> tuple[str, str] | None:
    """``"CYTOMINE pub:sig"`` -> ``(pub, sig)``; None when absent or not in that form."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.upper() != AUTH_SCHEME or ":" not in credentials:
        return None
    public_key, _, sig = credentials.strip().partition(":")
    if not public_key or not sig:
        return None
    return public_key, sig


def verify(
    private_key: str,
    received_signature: str,
    *,
    method: str,
    content_md5: str,
    content_type: str,
    date: str,
    path_and_query: str,
) -> bool:
    """True when ``received_signature`` matches either signature form (with or without the
    content type, as the Java filter retries)."""
    for ct in dict.fromkeys((content_type, "")):
        candidates = (
            legacy_token(method, content_md5, ct, date, path_and_query),
            modern_token(method, content_md5, ct, date),
        )
        for token in candidates:
            if hmac.compare_digest(signature(private_key, token), received_signature):
                return True
    return False


def authorization_header(public_key: str, private_key: str, token: str) -> str:
    """The header value a client sends for ``token`` (used by tests and tools)."""
    return f"{AUTH_SCHEME} {public_key}:{signature(private_key, token)}"
