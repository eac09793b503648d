"""One rendezvous suite, run against memory, local files, S3 (moto) and GCS (fake-gcs-server)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from icechunk_coop import ConfigurationError, WaitPolicy
from icechunk_coop.errors import (
    ForeignPayloadError,
    PayloadAuthenticationError,
    PayloadError,
    PayloadFormatError,
    WaitTimeoutError,
    WorkerFailedError,
)
from icechunk_coop.rendezvous import Rendezvous, normalise_url
from icechunk_coop.wire import Sealer

FAST = WaitPolicy(timeout=1.0, initial_interval=0.05, max_interval=0.2)


@pytest.fixture(params=["memory", "local", "s3", "gcs"])
def root_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    if request.param == "memory":
        return f"memory://rv-{uuid.uuid4().hex[:8]}"
    if request.param == "local":
        return str(tmp_path / "rendezvous")
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        return f"s3://{request.getfixturevalue('s3_bucket')}/rendezvous"
    for key, value in request.getfixturevalue("gcs_server").env.items():
        monkeypatch.setenv(key, value)
    return f"gs://{request.getfixturevalue('gcs_bucket')}/rendezvous"


Make = Callable[..., Rendezvous]


@pytest.fixture
def make(root_url: str, secret: str) -> Make:
    """``make(job_id="job-1", policy=FAST)``: a job's rendezvous at ``root_url``, sealed."""

    def make(job_id: str = "job-1", policy: WaitPolicy = FAST) -> Rendezvous:
        sealer = Sealer(job_id=job_id, secret=secret.encode())
        return Rendezvous.for_job(root_url, job_id=job_id, sealer=sealer, policy=policy)

    return make


def test_publish_read_replace(make: Make) -> None:
    rv = make()
    assert rv.read("result-0") is None
    rv.publish("result-0", {"v": 1})
    assert rv.read("result-0") == {"v": 1}
    rv.publish("result-0", {"v": 2})  # a re-run replaces its own blob whole
    assert rv.read("result-0") == {"v": 2}
    assert rv.arrived() == {"result-0"}


def test_publish_once_first_wins(make: Make) -> None:
    a, b = make(), make()
    assert a.publish_once("setup", "from-a") == (True, "from-a")
    assert b.publish_once("setup", "from-b") == (False, "from-a")
    assert b.read("setup") == "from-a"


def test_listing_cache_trap(make: Make) -> None:
    """A blob that appears after a negative probe is seen by the same instance."""
    waiter, writer = make(), make()
    writer.publish("other", 0)
    assert waiter.arrived() == {"other"}
    assert waiter.read("late") is None
    writer.publish("late", "here")
    assert waiter.arrived() == {"other", "late"}
    assert waiter.read("late") == "here"
    assert waiter.wait_for("late") == "here"


def test_wait_for_all_returns_everything(make: Make) -> None:
    rv = make()
    for i in range(3):
        rv.publish(f"result-{i}", i)
    assert rv.wait_for_all([f"result-{i}" for i in range(3)]) == {
        "result-0": 0,
        "result-1": 1,
        "result-2": 2,
    }


def test_timeout_names_the_missing(make: Make) -> None:
    short = WaitPolicy(timeout=0.3, initial_interval=0.05, max_interval=0.1)
    rv = make(policy=short)
    rv.publish("result-1", 1)
    with pytest.raises(WaitTimeoutError) as info:
        rv.wait_for_all(["result-0", "result-1", "result-2"])
    err = info.value
    assert err.missing == ["result-0", "result-2"]
    assert err.expected == 3
    assert err.waited_seconds >= short.timeout * 0.5
    assert "result-0, result-2" in str(err)
    assert rv.url in str(err)
    with pytest.raises(WaitTimeoutError, match="setup"):
        rv.wait_for("setup")


def test_failure_marker_stops_waiters(make: Make) -> None:
    # A long deadline: only the marker can end these waits with WorkerFailedError.
    rv = make(policy=WaitPolicy(timeout=120, initial_interval=0.05, max_interval=0.2))
    rv.mark_failed("result-2", "ValueError: no source files")
    with pytest.raises(WorkerFailedError, match="no source files") as info:
        rv.wait_for_all(["result-0", "result-1", "result-2"])
    assert info.value.failures == {"result-2": "ValueError: no source files"}
    rv.mark_failed("setup", "worker 0 crashed")
    with pytest.raises(WorkerFailedError, match="worker 0 crashed"):
        rv.wait_for("setup")
    rv.clear_failure("setup")
    rv.publish("setup", "ok")
    assert rv.wait_for("setup") == "ok"


def test_a_published_blob_outranks_an_old_failure_marker(make: Make) -> None:
    rv = make()
    rv.mark_failed("result-0", "first attempt died")
    rv.publish("result-0", "second attempt")
    assert rv.wait_for_all(["result-0"]) == {"result-0": "second attempt"}


def _plant(rv: Rendezvous, name: str, data: bytes) -> None:
    rv.blobs.put(name, data)


def test_planted_malicious_pickle_is_refused(make: Make, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"

    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            return (Path.touch, (canary,))

    rv = make()
    _plant(rv, "setup", pickle.dumps(Boom()))
    with pytest.raises(PayloadFormatError):
        rv.read("setup")
    with pytest.raises(PayloadFormatError):
        rv.wait_for("setup")
    assert not canary.exists()


def test_tampered_truncated_and_foreign_blobs_are_refused(make: Make) -> None:
    rv = make()
    rv.publish("result-0", {"files": ["a"]})
    good = rv.blobs.get("result-0")
    assert good is not None
    _plant(rv, "result-0", good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(PayloadAuthenticationError):
        rv.read("result-0")
    _plant(rv, "result-0", good[: len(good) // 2])
    with pytest.raises(PayloadError):
        rv.read("result-0")
    other = make(job_id="job-2")
    _plant(rv, "result-0", other.sealer.seal({"x": 1}, name="result-0", content="json"))
    with pytest.raises(ForeignPayloadError, match="job-2"):
        rv.read("result-0")


def test_jobs_are_isolated(make: Make) -> None:
    a, b = make("job-a"), make("job-b")
    a.publish("setup", "a")
    assert b.read("setup") is None
    assert b.arrived() == set()


def test_remove_all(make: Make) -> None:
    rv = make()
    rv.publish("setup", 1)
    rv.mark_failed("result-0", "x")
    rv.remove_all()
    assert rv.arrived() == set()
    rv.remove_all()  # idempotent


def test_remove_all_can_keep_a_marker(make: Make) -> None:
    rv = make()
    for name in ("setup", "result-0", "committed"):
        rv.publish(name, name)
    rv.remove_all(keep=["committed"])
    assert rv.arrived() == {"committed"}
    assert rv.read("committed") == "committed"


def test_requests_are_counted(make: Make) -> None:
    rv = make()
    rv.publish("setup", 1)
    rv.wait_for("setup")
    assert rv.requests.counts["put"] == 1
    assert rv.requests.counts["get"] == 2  # one poll: the blob and its failure marker, at once


def test_a_waits_early_polls_ask_for_the_blob_alone(make: Make) -> None:
    """The blob every waiting worker needs is asked for on every poll, its markers once a second.

    The polls here come back to back (a sleep that only counts), so within
    that second: the first poll asks for the blob, its failure marker and
    ``unless``; the next five for the blob alone.
    """
    rv = make()
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 5:
            rv.publish("setup", 1)

    policy = WaitPolicy(timeout=30, initial_interval=0.02, max_interval=0.1, sleep=sleep)
    assert rv.wait_for("setup", policy=policy, unless="committed") == 1
    # 6 polls of the blob + the marker and ``unless`` once (twice if the polls took over 1 s)
    assert rv.requests.counts["get"] in {6 + 2, 6 + 4}, rv.requests.counts


def test_a_wait_told_its_caller_just_read_the_blob_pauses_before_asking(make: Make) -> None:
    """A worker's start has just read the setup: its wait sends nothing before the first pause.

    Nor does it ask for the markers (the start read ``committed``) within the
    next second: the polls that find the setup are one GET each.
    """
    rv = make()
    gets_at_pause: list[int] = []

    def sleep(seconds: float) -> None:
        gets_at_pause.append(rv.requests.counts["get"])
        if len(gets_at_pause) == 3:
            rv.publish("setup", 1)

    policy = WaitPolicy(timeout=30, initial_interval=0.02, max_interval=0.1, sleep=sleep)
    assert rv.wait_for("setup", policy=policy, just_read=True, unless="committed") == 1
    assert gets_at_pause == [0, 1, 2]  # (the pauses only count: the three polls take ms)
    assert rv.requests.counts["get"] == 3  # the blob alone, three times


def test_a_wait_told_its_caller_just_read_still_ends_on_a_failure(
    make: Make,
) -> None:
    """The markers a just-read wait skips at first are asked a second later: a failure ends it."""
    rv = make()
    rv.mark_failed("setup", "worker 0 died")
    policy = WaitPolicy(timeout=30, initial_interval=0.02, max_interval=0.1)
    with pytest.raises(WorkerFailedError, match="worker 0 died"):
        rv.wait_for("setup", policy=policy, just_read=True)


WORKER = textwrap.dedent(
    """
    import os, sys
    from icechunk_coop import Rendezvous, Sealer, WaitPolicy
    index, total = int(os.environ["WORKER_INDEX"]), int(os.environ["WORKERS_TOTAL"])
    job = os.environ["JOB_NAME"]
    rv = Rendezvous.for_job(sys.argv[1], job_id=job, sealer=Sealer.from_env(job),
                            policy=WaitPolicy(timeout=60, initial_interval=0.05, max_interval=0.5))
    if index == 0:
        rv.publish_once("setup", {"base": "S0"})
    setup = rv.wait_for("setup")
    rv.publish(f"result-{index}", {"index": index, "base": setup["base"]})
    if index == total - 1:
        got = rv.wait_for_all([f"result-{i}" for i in range(total)])
        assert [v["index"] for v in got.values()] == list(range(total)), got
        print("ALL", len(got))
    """
)


def test_real_processes_meet(root_url: str, secret: str) -> None:
    if root_url.startswith("memory://"):
        pytest.skip("memory:// is one process by definition")
    total = 4
    procs = []
    # Start the last worker first: it must wait for the others, not find them done.
    for index in reversed(range(total)):
        env = {
            **os.environ,
            "WORKER_INDEX": str(index),
            "WORKERS_TOTAL": str(total),
            "JOB_NAME": "proc-job",
            "ICECHUNK_COOP_SECRET": secret,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, root_url],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    assert "ALL 4" in outputs[0][0]


@pytest.mark.parametrize(
    "url",
    ["", "ftp://host/x", "s3://", "gs:///prefix", "s3://b/p?x=1", "s3://b/../p", "c:relative"],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="URL"):
        normalise_url(url)


@pytest.mark.parametrize("job_id", ["../escape", "a/b", "", ".hidden", "x y"])
def test_unsafe_job_ids_are_refused(job_id: str, secret: str) -> None:
    sealer = Sealer(job_id=job_id, secret=secret.encode())
    with pytest.raises(ConfigurationError, match="unsafe"):
        Rendezvous.for_job("memory://x", job_id=job_id, sealer=sealer)
