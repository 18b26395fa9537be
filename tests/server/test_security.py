"""What a hostile user with valid keys can and cannot do to the local server (issue 11, items 1-6).

Each test reproduces one defect found on d00c835 (and failed there):
1. only the operator says what runs; 2. projects have members, a job's keys act in its project
until it ends; 3. signatures expire; 4. pixels and bodies are bounded; 5. secrets on disk are
readable by their owner only; 6. bad input is a 4xx that says what to change, with no server path
in any answer, and request paths are logged escaped.
"""

from __future__ import annotations

from cytomine.models import Software

from mtdp_core.server.testing import signed_request


def _keys(user) -> tuple[str, str]:
    return user["public_key"], user["private_key"]


def _as(server, user, method, path, body=None, **kwargs):
    return signed_request(server.url, _keys(user), method, path, json_body=body, **kwargs)


def _admin(server, method, path, body=None, **kwargs):
    return _as(server, server.admin, method, path, body, **kwargs)


# ---------------------------------------------------------------------- 1. what runs
def test_1_only_the_operator_says_what_runs(server, seeded, probe_descriptor):
    registered = server.register_app(probe_descriptor)
    sid = registered["id"]
    alice = server.store.users.create("alice")
    evil = ["sh", "-c", "cat admin-keys.json"]
    # A non-administrator creates and changes no software, nor its parameters.
    assert _as(server, alice, "POST", "/api/software.json", {"name": "evil", "localCommand": evil}).status_code == 403
    assert _as(server, alice, "PUT", f"/api/software/{sid}.json", {"localCommand": evil}).status_code == 403
    assert _as(server, alice, "DELETE", f"/api/software/{sid}.json").status_code == 403
    parameter = {"software": sid, "name": "extra", "type": "String", "defaultValue": "--cytomine_host=evil"}
    assert _as(server, alice, "POST", "/api/software_parameter.json", parameter).status_code == 403
    # No HTTP request sets the command that runs, not even an administrator's: register-app does.
    for method, path in (("POST", "/api/software.json"), ("PUT", f"/api/software/{sid}.json")):
        answer = _admin(server, method, path, {"name": "evil", "localCommand": evil})
        assert answer.status_code == 400, answer.text
        assert "localCommand" in answer.json()["message"] and "register-app" in answer.json()["message"]
    assert server.store.software.get(sid)["local_command"] == registered["local_command"]
    assert [s["name"] for s in server.store.software.list()] == ["MTDP-Probe"]
    # What an administrator may change goes through, as the client's Software.update() sends it.
    server.connect()
    assert Software().fetch(sid).update(softwareVersion="2.0") is not False
    assert server.store.software.get(sid)["software_version"] == "2.0"
