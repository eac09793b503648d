"""Failure markers say which try and which pod failed, and stay readable both ways."""

from __future__ import annotations

import uuid

from icechunk_coop import WorkerIdentity
from icechunk_coop.rendezvous._meeting import StoredMeeting
from icechunk_coop.rendezvous._rendezvous import Rendezvous
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._markers import Failure
from icechunk_coop.wire._records import failure_name

OLD_KEYS = {"format", "name", "summary", "at", "worker"}


def test_a_marker_names_the_try_and_the_pod() -> None:
    marker = Failure(name="result-3", summary="OSError", at=1.0, worker=3, attempt=2, pod="j-3-x")
    wire = marker.to_wire()
    assert wire["attempt"] == 2
    assert wire["pod"] == "j-3-x"
    assert "restart" not in wire  # only what is known is written
    assert Failure.from_wire(wire, "t") == marker


def test_a_marker_without_them_is_written_as_older_versions_wrote_it() -> None:
    wire = Failure(name="setup", summary="x", at=1.0).to_wire()
    assert set(wire) == OLD_KEYS


def test_an_older_marker_reads_with_none() -> None:
    old = {"format": Failure.FORMAT, "name": "result-0", "summary": "x", "at": 1, "worker": 0}
    marker = Failure.from_wire(old, "t")
    assert (marker.attempt, marker.restart, marker.pod) == (None, None, None)


def test_an_older_reader_ignores_the_new_keys() -> None:
    """What an older version's ``from_wire`` did: read the five keys it knows, ignore others."""
    wire = Failure(name="result-1", summary="x", at=1.0, worker=1, attempt=1, pod="p").to_wire()
    known = {key: wire[key] for key in OLD_KEYS}
    assert Failure.from_wire(known, "t").worker == 1
    assert wire["format"] == "icechunk-coop/failure/1"  # the same format: no reader refuses it


def test_a_worker_that_knows_its_pod_puts_it_in_its_marker(secret: str) -> None:
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    rendezvous = Rendezvous.for_job(
        "memory://markers", job_id=job_id, sealer=Sealer(job_id=job_id, secret=secret.encode())
    )
    me = WorkerIdentity(
        worker_index=1, workers_total=2, job_name=job_id, attempt=1, restart=0, pod="p-1-abcde"
    )
    StoredMeeting(rendezvous=rendezvous, identity=me).mark_failed("result-1", "OSError: gone")
    marker = Failure.from_wire(rendezvous.read(failure_name("result-1")), "t")
    assert (marker.worker, marker.attempt, marker.restart, marker.pod) == (1, 1, 0, "p-1-abcde")
    # Without an identity (a tool marking a job failed) nothing is claimed.
    StoredMeeting(rendezvous=rendezvous).mark_failed("result-0", "OSError: gone")
    marker = Failure.from_wire(rendezvous.read(failure_name("result-0")), "t")
    assert (marker.attempt, marker.pod) == (None, None)
