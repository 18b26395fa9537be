"""Request signatures: both client generations accepted, anything else refused with a JSON 401."""

from __future__ import annotations

from email.utils import formatdate

import requests

from mtdp_core.server.auth import (
    authorization_header,
    legacy_token,
    modern_token,
    parse_authorization,
    signature,
    verify,
)


def _get(server, path: str, token_fn, *, private_key=None, date=None, content_type=""):
    date = date or formatdate(usegmt=True)
    token = token_fn(date)
    headers = {
        "date": date,
        "authorization": authorization_header(server.public_key, private_key or server.private_key, token),
    }
    if content_type:
        headers["content-type"] = content_type
    return requests.get(server.url + path, headers=headers, timeout=10)


def test_signature_matches_the_official_client():
    # The 3.0.0 client's CytomineAuth, token built by hand for a known request.
    token = "GET\n\n\nSun, 22 Nov 2026 02:41:25 +0000\n/api/user/current.json"
    import base64
    import hashlib
    import hmac

    expected = base64.b64encode(hmac.new(b"secret", token.encode(), hashlib.sha1).digest()).decode()
    assert signature("secret", token) == expected
    assert parse_authorization(f"CYTOMINE pub:{expected}") == ("pub", expected)
    assert parse_authorization("Bearer xyz") is None and parse_authorization(None) is None


def test_verify_accepts_both_forms_and_an_empty_content_type_retry():
    kwargs = dict(
        method="POST", content_md5="", content_type="application/json", date="d", path_and_query="/api/x.json?a=1"
    )
    legacy = signature("k", legacy_token("POST", "", "application/json", "d", "/api/x.json?a=1"))
    modern = signature("k", modern_token("POST", "", "application/json", "d"))
    no_type = signature("k", legacy_token("POST", "", "", "d", "/api/x.json?a=1"))
    assert verify("k", legacy, **kwargs) and verify("k", modern, **kwargs) and verify("k", no_type, **kwargs)
    assert not verify("other", legacy, **kwargs)
    assert not verify("k", legacy, **{**kwargs, "path_and_query": "/api/y.json"})


def test_the_real_client_signs_with_the_path_and_is_accepted(client, server):
    assert client.current_user.username == "admin" and client.current_user.id == server.admin["id"]
    assert client.current_user.publicKey == server.public_key


def test_client_4x_signature_form_is_accepted(server):
    # 4.x signs "METHOD\n\nCT\nDATE" with no path (computed here: 4.x cannot be installed next to 3.0.0).
    response = _get(server, "/api/user/current.json?max=0", lambda date: modern_token("GET", "", "", date))
    assert response.status_code == 200 and response.json()["username"] == "admin"


def test_bad_signature_is_rejected_with_json(server):
    response = _get(
        server,
        "/api/project.json",
        lambda date: legacy_token("GET", "", "", date, "/api/project.json"),
        private_key="not-the-key",
    )
    assert response.status_code == 401
    body = response.json()
    assert body["success"] is False and "signature" in body["errors"]
    # Signing another path is a bad signature too (the legacy form covers the path and query).
    response = _get(server, "/api/project.json", lambda date: legacy_token("GET", "", "", date, "/api/term.json"))
    assert response.status_code == 401


def test_unauthenticated_requests_get_401_but_ping_is_open(server):
    response = requests.get(server.url + "/api/project.json", timeout=10)
    assert response.status_code == 401 and "Authentication required" in response.json()["message"]
    unknown = requests.get(
        server.url + "/api/project.json",
        timeout=10,
        headers={"authorization": "CYTOMINE nobody:abc", "date": formatdate(usegmt=True)},
    )
    assert unknown.status_code == 401 and "Unknown public key" in unknown.json()["message"]
    ping = requests.get(server.url + "/server/ping", timeout=10)
    assert ping.status_code == 200 and ping.json()["alive"] is True


def test_keys_are_never_logged(server, caplog, tmp_path):
    import logging

    from mtdp_core.server.config import ServerConfig
    from mtdp_core.server.testing import running_server

    with caplog.at_level(logging.DEBUG), running_server(config=ServerConfig(log_requests=True)) as logged:
        c = logged.connect()
        assert c.current_user.username == "admin"
        private_key = logged.private_key
    text = caplog.text
    assert "/api/user/current.json" in text and "admin" in text  # requests are logged ...
    assert private_key not in text  # ... without the private key
