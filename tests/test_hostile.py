"""Blobs planted at every rendezvous path of a job: none is unpickled; refusals name the blob.

Each case plants one bad blob at one of the job's names before its three
workers run, or while they run (in this process, local files). The job either completes with
exactly one commit (it overwrote its own slot) or stops with a refusal that
names the blob; the planted pickle's payload never runs.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import icechunk
import pytest
import zarr

from icechunk_coop import Stores, WaitPolicy, WorkerOutcome
from icechunk_coop.errors import PayloadError, WorkerFailedError
from icechunk_coop.testing import job_commits, run_in_process
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._records import COMMITTED, PLAN, SETUP, failure_name, result_name

if TYPE_CHECKING:
    from conftest import JobFactory

READ_BEFORE_WRITTEN = {SETUP, PLAN, COMMITTED}
NAMES = [SETUP, result_name(0), result_name(1), result_name(2), PLAN, COMMITTED,
         failure_name(result_name(1)), failure_name(SETUP)]  # fmt: skip


class Boom:
    """Unpickling this creates a file: the proof that nobody unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.path, "w"))


def bad_blob(kind: str, name: str, sentinel: Path, secret: str) -> bytes:
    payload = {"format": "icechunk-coop/setup/1", "boom": Boom(str(sentinel))}
    if kind == "raw-pickle":
        return pickle.dumps(Boom(str(sentinel)))
    if kind == "other-secret":
        other = Sealer(job_id="h-u", secret=b"another-secret-0123456789abcdef")
        return other.seal(payload, name=name, content="pickle")
    if kind == "other-job":
        return Sealer(job_id="x-u", secret=secret.encode()).seal(
            payload, name=name, content="pickle"
        )
    if kind == "truncated":
        sealed = Sealer(job_id="h-u", secret=secret.encode()).seal(
            {"format": "icechunk-coop/setup/1"}, name=name, content="pickle"
        )
        return sealed[: len(sealed) // 2]
    if kind == "wrong-record":  # authentic, right job and name, but not a record we wrote
        return Sealer(job_id="h-u", secret=secret.encode()).seal(
            {"format": "icechunk-coop/other/9"}, name=name, content="json"
        )
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["raw-pickle", "other-secret", "other-job", "truncated",
                                  "wrong-record"])  # fmt: skip
@pytest.mark.parametrize("name", NAMES)
def test_a_planted_blob_is_refused_by_name_or_overwritten(
    tmp_path: Path, make_job: JobFactory, secret: str, name: str, kind: str
) -> None:
    sentinel = tmp_path / "pwned"
    storage = icechunk.local_filesystem_storage(str(tmp_path / "repo"))

    def prepare(stores: Stores) -> None:
        zarr.open_group(stores.primary, mode="a").create_array(
            "a", shape=(3,), chunks=(1,), dtype="i4", fill_value=0
        )

    first = make_job(0, 3, name="h")
    first.meeting.rendezvous.blobs.put(name, bad_blob(kind, name, sentinel, secret))  # type: ignore[attr-defined]

    def run_job() -> None:
        run_in_process(
            make_job,
            3,
            lambda job: job.run(work=lambda stores: None, prepare=prepare, message="m"),
            job_name="h",
            job_uid="u",
        )

    if name in READ_BEFORE_WRITTEN:
        # A blob the job reads before it writes its own: refused, naming it.
        with pytest.raises(PayloadError) as info:
            run_job()
        assert info.value.location.endswith(f"/{name}"), info.value
        if icechunk.Repository.exists(storage):
            assert job_commits(icechunk.Repository.open(storage), "h-u") == []
    else:
        # A slot the job writes (or withdraws) before anyone reads it: overwritten.
        run_job()
        assert len(job_commits(icechunk.Repository.open(storage), "h-u")) == 1
    assert not sentinel.exists(), "a planted pickle was unpickled"
    assert not os.path.exists(tmp_path / "pwned")


DURING = [SETUP, result_name(1), PLAN, COMMITTED, failure_name(result_name(1))]


class Polls:
    """The pauses between the polls of one thread's waits, counted (``WaitPolicy.sleep``).

    A pause follows each poll that found nothing, so ``n`` more pauses mean
    ``n - 1`` whole polls made since: what the test waits for instead of
    guessing a time.
    """

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.pauses = 0
        self.ended = False
        self._changed = threading.Condition()

    def sleep(self, seconds: float) -> None:
        if threading.current_thread() is self.thread:
            with self._changed:
                self.pauses += 1
                self._changed.notify_all()
        time.sleep(seconds)  # the wait's own interval between two polls

    def end(self) -> None:
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, pauses: int, timeout: float = 20) -> None:
        """Until the thread has paused ``pauses`` more times, or ended (a guard, not a time)."""
        with self._changed:
            target = self.pauses + pauses
            seen = self._changed.wait_for(lambda: self.pauses >= target or self.ended, timeout)
        assert seen, f"the last worker made no {pauses} more polls in {timeout} s"


@pytest.mark.parametrize("kind", ["raw-pickle", "other-secret", "truncated"])
@pytest.mark.parametrize("name", DURING)
@pytest.mark.parametrize("when", ["between-workers", "while-the-last-waits"])
def test_a_blob_planted_during_the_run_is_refused_by_name_or_overwritten(
    tmp_path: Path, make_job: JobFactory, secret: str, name: str, kind: str, when: str
) -> None:
    """The same blobs, planted mid-job: after worker 0 published, or while the last one waits.

    Whatever lands first, the job either commits once or stops with an error
    that names the planted blob; it never ends quietly without its commit
    (a forged ``committed`` seen by a wait used to make every waiting worker
    report "already committed"), and the pickle never runs.
    """
    sentinel = tmp_path / "pwned"
    storage = icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    polls = Polls()
    policy = WaitPolicy(timeout=30, initial_interval=0.02, max_interval=0.1, sleep=polls.sleep)
    make = partial(make_job, total=3, name="h", primary=storage, policy=policy)

    def prepare(stores: Stores) -> None:
        zarr.open_group(stores.primary, mode="a").create_array(
            "a", shape=(3,), chunks=(1,), dtype="i4", fill_value=0
        )

    outcomes: dict[int, WorkerOutcome | BaseException] = {}

    def run(index: int) -> None:
        try:
            outcomes[index] = make(index).run(work=lambda s: None, prepare=prepare, message="m")
        except Exception as exc:
            outcomes[index] = exc

    def run_last() -> None:
        try:
            run(2)
        finally:
            polls.end()

    blobs = make(0).meeting.rendezvous.blobs  # type: ignore[attr-defined]
    run(0)
    last = polls.thread = threading.Thread(target=run_last)
    if when == "while-the-last-waits":
        last.start()
        polls.wait_for(2)  # a whole poll of its wait for result-1: it published its own
        assert blobs.get(result_name(2)) is not None, outcomes
    blobs.put(name, bad_blob(kind, name, sentinel, secret))
    if when == "while-the-last-waits":
        polls.wait_for(2)  # the last worker's wait meets the blob before worker 1 runs
    run(1)
    if when == "between-workers":
        last.start()
    last.join(60)
    assert not last.is_alive()

    commits = job_commits(icechunk.Repository.open(storage), "h-u")
    errors = {i: o for i, o in outcomes.items() if isinstance(o, BaseException)}
    for index, error in errors.items():
        assert isinstance(error, PayloadError | WorkerFailedError), (index, error)
        assert f"/{name}" in str(error) or name in str(error), (index, error)
    said_done = [i for i, o in outcomes.items()
                 if isinstance(o, WorkerOutcome) and o.status == "already-committed"]  # fmt: skip
    assert not (said_done and not commits), f"workers {said_done} said the job was done: it is not"
    if errors:
        assert commits == [], "a job that stopped committed anyway"
    else:
        assert len(commits) == 1, f"no error and {len(commits)} commits: {outcomes}"
    assert not sentinel.exists(), "a planted pickle was unpickled"
