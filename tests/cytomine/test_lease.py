"""The push lease: one job of a software pushes at a time; a dead holder's lease is taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from mtdp_core.cytomine.errors import CytomineRequestError, PushError
from mtdp_core.cytomine.lease import PushLease


def leases(server, seeded):
    properties = server.store.meta.list_properties("be.cytomine.project.Project", seeded.project_id)
    return [p for p in properties if p["key"].startswith("mtdp-push-lock:")]


def lease(job_user, seeded, **kwargs):
    kwargs.setdefault("poll", 0.05)
    return PushLease(job_user.session, seeded.project_id, "MTDP-Test-App", job=job_user.job["id"], **kwargs)


def test_taken_held_alone_and_released(server, seeded, make_job_user):
    first, second = make_job_user(), make_job_user()
    order = []
    with lease(first, seeded):
        assert (
            len(leases(server, seeded)) == 1
            and json.loads(leases(server, seeded)[0]["value"])["job"] == first.job["id"]
        )

        def other():
            with lease(second, seeded):
                order.append("second")

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.5)
        order.append("first done")
    thread.join(30)
    assert order == ["first done", "second"]
    assert leases(server, seeded) == []


def test_released_when_the_holder_fails(server, seeded, make_job_user):
    with pytest.raises(RuntimeError), lease(make_job_user(), seeded):
        raise RuntimeError("boom")
    assert leases(server, seeded) == []


def test_lease_of_an_ended_job_is_taken_over(server, seeded, make_job_user):
    dead, alive = make_job_user(), make_job_user()
    held = lease(dead, seeded)
    held.acquire()
    held._stop.set()  # the holder died: no heartbeat, no release
    server.store.jobs.set_status(dead.job["id"], 8, "killed", 50)
    other = lease(alive, seeded, wait=5)
    assert other.acquire() and json.loads(leases(server, seeded)[0]["value"])["job"] == alive.job["id"]
    other.release()
    assert leases(server, seeded) == []


def test_lease_of_a_dead_process_is_taken_over(server, seeded, make_job_user):
    holder, waiter = make_job_user(), make_job_user()
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    held = lease(holder, seeded)
    held.acquire()
    held._stop.set()
    prop = leases(server, seeded)[0]
    value = {**json.loads(prop["value"]), "pid": process.pid}  # its job still RUNNING, its process gone
    server.store.meta.update_property(prop["id"], {"value": json.dumps(value)})
    other = lease(waiter, seeded, wait=5)
    assert other.acquire()
    other.release()


def test_lease_without_heartbeat_is_taken_over_after_stale_after(server, seeded, make_job_user):
    holder, waiter = make_job_user(), make_job_user()
    held = lease(holder, seeded, heartbeat=3600)  # alive (this process, job RUNNING) but silent
    held.acquire()
    start = time.monotonic()
    other = lease(waiter, seeded, stale_after=0.5, wait=30)
    assert other.acquire()
    assert time.monotonic() - start >= 0.5
    other.release()
    held.release()  # its property is gone (taken over): nothing to delete, no error
    assert leases(server, seeded) == []


def test_a_live_holder_is_waited_for_then_the_wait_gives_up(server, seeded, make_job_user):
    holder, waiter = make_job_user(), make_job_user()
    expected = f"Re-run the job when job {holder.job['id']} has finished pushing"
    with lease(holder, seeded, heartbeat=0.1), pytest.raises(PushError, match=expected):
        lease(waiter, seeded, stale_after=1.0, wait=1.5).acquire()
    assert leases(server, seeded) == []


def test_no_lease_when_the_server_refuses_project_properties(seeded, make_job_user, monkeypatch):
    job = make_job_user()

    def refuse(*args, **kwargs):
        raise CytomineRequestError("HTTP 403: forbidden", status=403)

    monkeypatch.setattr(job.session, "post_json", refuse)
    assert lease(job, seeded).acquire() is False
