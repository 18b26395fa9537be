"""Users and job users (the core's User and UserJob)."""

from __future__ import annotations

from mtdp_core.server.api.serialisers.envelopes import JSON, base
from mtdp_core.server.domain import Row


def user(row: Row, *, viewer: Row | None, launcher: Row | None = None, current: bool = False) -> JSON:
    """A human user or a job user (``launcher``: the person who launched its job). Keys are shown
    to the user itself, and a job user's keys also to its launcher and to administrators."""
    data = _job_user(row, launcher) if row["algo"] else _person(row)
    if row["algo"]:
        can_see_keys = viewer is not None and (viewer["id"] in (row["id"], row["launcher_id"]) or viewer["is_admin"])
    else:
        can_see_keys = viewer is not None and viewer["id"] == row["id"]
    if can_see_keys:
        data["publicKey"] = row["public_key"]
        data["privateKey"] = row["private_key"]
    if current:
        admin = bool(row["is_admin"])
        data.update(
            {
                "adminByNow": admin,
                "userByNow": not admin and not row["algo"],
                "guestByNow": False,
                "isSwitched": False,
                "isSuperAdmin": admin,
            }
        )
    return data


def _person(row: Row) -> JSON:
    """A person (the core's User): always enabled, English, from the local bootstrap."""
    return base("user", row) | {
        "username": row["username"],
        "firstname": row["firstname"],
        "lastname": row["lastname"],
        "email": row["email"],
        "language": "ENGLISH",
        "isDeveloper": False,
        "enabled": True,
        "algo": False,
        "origin": "BOOTSTRAP",
        "admin": bool(row["is_admin"]),
        "user": not bool(row["is_admin"]),
        "guest": False,
        "color": None,
    }


def _job_user(row: Row, launcher: Row | None) -> JSON:
    return base("userjob", row) | {
        "username": row["username"],
        "algo": True,
        "humanUsername": launcher["username"] if launcher else None,
        "job": row["job_id"],
        "user": row["launcher_id"],
        "rate": -1.0,
        "admin": False,
        "guest": False,
        "isSwitched": False,
    }


def user_keys(row: Row) -> JSON:
    return {"publicKey": row["public_key"], "privateKey": row["private_key"]}
