"""Proof under faults: a misbehaving S3 in front of moto, and jobs that run through it.

The proxy (``icechunk_coop.testing.fault_proxy``, its own process) sits
between every client and the session's moto server: icechunk's Rust client
and s3fs alike reach it through ``AWS_ENDPOINT_URL``. Checks of what really
landed go to moto directly, past the proxy.
"""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import icechunk
import numpy as np
import pytest
import s3fs
import zarr

from icechunk_coop import IcechunkTarget, icechunk_storage
from icechunk_coop.errors import StorageUnreachableError
from icechunk_coop.rendezvous._blobs import BlobStore
from icechunk_coop.targets import driver_for
from icechunk_coop.testing import FaultProxy, LocalS3, fault_proxy, job_commits, start_workers
from schedules import Reader, expected_temp, final_error, is_clear

WORKER = str(Path(__file__).with_name("coop_worker.py"))
ROWS = 16  # coop_worker's rows per job
# "10% injected faults, mixed": of every request 3% reset, 3% SlowDown, 2% 500;
# 2% of writes lose their reply after landing; 5% wait 200 ms on top.
MIXED_10 = {"reset": 0.03, "slowdown": 0.03, "error500": 0.02, "lose_reply": 0.02}
MIXED_DELAY = {"delay": 0.05, "delay_ms": 200}

# Above the rate where jobs stop completing (``docs/faults.md``), every worker must stop
# with an error that says what happened. With the clients' default retry budgets a
# failing request takes minutes to give up (botocore: 10 attempts, backoff to 20 s,
# under s3fs's 5 rounds; icechunk: 10 tries, backoff from 100 ms), whatever the
# job's deadline: so this job's workers are coop_worker with tighter budgets, set
# the way a user with a short deadline would (``TIGHT_*``, through the public
# ``storage_options`` and ``IcechunkTarget.config``).
TIGHT_BOTOCORE = {"retries": {"total_max_attempts": 3, "mode": "standard"}}
TIGHT_ICECHUNK = {"max_tries": 3, "initial_backoff_ms": 50, "max_backoff_ms": 1000}


@pytest.fixture(scope="module")
def proxy_server(moto_server: LocalS3) -> Iterator[FaultProxy]:
    with fault_proxy(moto_server.endpoint_url, seed=1) as proxy:
        yield proxy


@pytest.fixture
def proxy(proxy_server: FaultProxy) -> Iterator[FaultProxy]:
    """The module's proxy, harmless at the start and the end of each test."""
    proxy_server.clear()
    yield proxy_server
    proxy_server.clear()


def client(endpoint: str, attempts: int = 1) -> Any:
    """boto3 with no retries of its own (``attempts=1``): each fault shows as it is."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=botocore.config.Config(retries={"total_max_attempts": attempts, "mode": "standard"}),
    )


def landed(moto: LocalS3, bucket: str, key: str) -> bytes | None:
    try:
        body: bytes = client(moto.endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchKey":
            return None
        raise
    return body


def grew(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# ---- (a) each kind of fault, one request at a time ---------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("slowdown", 503, "SlowDown"), ("error500", 500, "InternalError")],
)
def test_error_replies_are_s3_errors_and_nothing_lands(
    proxy: FaultProxy, moto_server: LocalS3, s3_bucket: str, kind: str, status: int, code: str
) -> None:
    before = proxy.counts()
    proxy.set_rates(**{kind: 1.0})
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client(proxy.endpoint_url).put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    with pytest.raises(botocore.exceptions.ClientError):  # a HEAD gets the status, no body
        client(proxy.endpoint_url).head_object(Bucket=s3_bucket, Key="k")
    assert grew(before, proxy.counts()) == {"requests": 2, kind: 2}
    assert landed(moto_server, s3_bucket, "k") is None


def test_reset_drops_the_connection_before_forwarding(
    proxy: FaultProxy, moto_server: LocalS3, s3_bucket: str
) -> None:
    before = proxy.counts()
    proxy.set_rates(reset=1.0)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client(proxy.endpoint_url).put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert grew(before, proxy.counts()) == {"requests": 1, "reset": 1}
    assert landed(moto_server, s3_bucket, "k") is None


def test_a_lost_reply_hides_a_write_that_landed(
    proxy: FaultProxy, moto_server: LocalS3, s3_bucket: str
) -> None:
    before = proxy.counts()
    proxy.set_rates(lose_reply=1.0)
    s3 = client(proxy.endpoint_url)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"landed")
    assert landed(moto_server, s3_bucket, "k") == b"landed"
    assert (("PUT", f"/{s3_bucket}/k", 200)) in proxy.lost_writes()
    # Reads are never "lost": only writes are hit by this kind.
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"landed"
    assert grew(before, proxy.counts()) == {"requests": 2, "forwarded": 2, "lose_reply": 1}


def test_delay_holds_the_reply_and_it_still_arrives(proxy: FaultProxy, s3_bucket: str) -> None:
    s3 = client(proxy.endpoint_url)
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    before = proxy.counts()
    proxy.set_rates(delay=1.0, delay_ms=50)
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"
    assert grew(before, proxy.counts()) == {"requests": 1, "forwarded": 1, "delay": 1}


def test_rates_are_checked_aimed_and_reproducible(proxy: FaultProxy, s3_bucket: str) -> None:
    with pytest.raises(ValueError, match="at most 1"):
        proxy.set_rates(reset=0.6, slowdown=0.6)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        proxy.set_rates(error500=1.5)
    with pytest.raises(ValueError, match="unknown"):
        proxy.set_rates(timeout=1)
    assert proxy.rates()["reset"] == 0  # a refused change changes nothing

    s3 = client(proxy.endpoint_url)
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v")

    def pattern(seed: int) -> list[bool]:
        proxy.set_rates(reset=0.5, seed=seed)
        hits = []
        for _ in range(16):
            try:
                s3.head_object(Bucket=s3_bucket, Key="k")
                hits.append(False)
            except botocore.exceptions.ConnectionClosedError:
                hits.append(True)
        return hits

    first = pattern(7)
    assert any(first) and not all(first)
    assert pattern(7) == first  # the same seed, the same faults

    # ``match`` aims at some paths, ``budget`` stops after n hits.
    proxy.set_rates(reset=1.0, match="/elsewhere/", budget=None)
    s3.head_object(Bucket=s3_bucket, Key="k")
    proxy.set_rates(match=None, budget=1)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        s3.head_object(Bucket=s3_bucket, Key="k")
    s3.head_object(Bucket=s3_bucket, Key="k")
    assert proxy.rates()["budget"] == 0


# ---- the clients' own retries, one layer at a time ----------------------------------------


def test_s3fs_retries_through_mixed_faults(proxy: FaultProxy, s3_bucket: str) -> None:
    fs = s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=proxy.endpoint_url,
        skip_instance_cache=True,
        use_listings_cache=False,
        config_kwargs={"retries": {"total_max_attempts": 10, "mode": "standard"}},
    )
    before = proxy.counts()
    proxy.set_rates(reset=0.1, slowdown=0.1, error500=0.1, seed=3)
    for i in range(8):
        fs.pipe_file(f"{s3_bucket}/blobs/{i}", str(i).encode())
    assert [fs.cat_file(f"{s3_bucket}/blobs/{i}") for i in range(8)] == [
        str(i).encode() for i in range(8)
    ]
    faults = grew(before, proxy.counts())
    assert faults.get("reset", 0) + faults.get("slowdown", 0) + faults.get("error500", 0) > 0


@pytest.mark.parametrize(
    "kind",
    ["reset", "slowdown", "error500"],
)
def test_rendezvous_storage_errors_that_outlast_the_retries_are_coop_errors(
    proxy: FaultProxy, s3_bucket: str, s3_env: LocalS3, kind: str
) -> None:
    """A reset, a SlowDown or a 500 that outlasts the retries is StorageUnreachableError.

    s3fs turns the last 503 SlowDown / 500 into a bare ``OSError`` (errno 16 /
    121); left raw, a worker would end with a traceback naming neither the job
    nor the store.
    """
    blobs = BlobStore(
        url=f"s3://{s3_bucket}/rendezvous",
        # No botocore retries: s3fs's own (5 short rounds for resets and SlowDown) remain.
        storage_options={
            "endpoint_url": proxy.endpoint_url,
            "config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}},
        },
    )
    proxy.set_rates(**{kind: 1.0})
    operations = {  # a waiter's probe, a publication, a listing
        "get": lambda: blobs.get("setup"),
        "put_if_absent": lambda: blobs.put_if_absent("setup", b"x"),
        "names": blobs.names,
    }
    escaped = {}
    for name, operation in operations.items():
        try:
            operation()
        except StorageUnreachableError:
            continue
        except Exception as exc:
            escaped[name] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:200]
        else:
            escaped[name] = "no error at all"
    assert escaped == {}


def test_put_if_absent_after_a_lost_reply_knows_the_write_was_its_own(
    proxy: FaultProxy, moto_server: LocalS3, s3_bucket: str, s3_env: LocalS3
) -> None:
    # s3fs retries the PUT whose reply was lost; S3 answers 412 (it landed), which
    # s3fs reports as FileExistsError. The rendezvous reads the blob back.
    blobs = BlobStore(
        url=f"s3://{s3_bucket}/rendezvous", storage_options={"endpoint_url": proxy.endpoint_url}
    )
    proxy.set_rates(lose_reply=1.0, budget=1)
    assert blobs.put_if_absent("setup", b"ours") is True
    assert proxy.lost_writes()[-1] == ("PUT", f"/{s3_bucket}/rendezvous/setup", 200)
    assert landed(moto_server, s3_bucket, "rendezvous/setup") == b"ours"
    assert blobs.put_if_absent("setup", b"theirs") is False  # a real conflict stays one


def test_icechunk_commit_whose_reply_was_lost_is_known_to_have_landed(
    proxy: FaultProxy, moto_server: LocalS3, s3_bucket: str, s3_env: LocalS3
) -> None:
    url = f"s3://{s3_bucket}/repo"
    icechunk.Repository.create(icechunk_storage(url, moto_server.env))
    repo = icechunk.Repository.open(icechunk_storage(url, proxy.env))
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").attrs["answer"] = 42
    # The branch moves by a conditional update of the ``repo`` object: lose that reply.
    proxy.set_rates(lose_reply=1.0, budget=1, match=r"/repo$")
    snapshot = session.commit("through a lost reply")
    method, path, status = proxy.lost_writes()[-1]
    assert (method, path.split("?")[0], status) == ("PUT", f"/{s3_bucket}/repo/repo", 200)
    direct = icechunk.Repository.open(icechunk_storage(url, moto_server.env))
    assert direct.lookup_branch("main") == snapshot
    root = zarr.open_group(direct.readonly_session("main").store, mode="r")
    assert dict(root.attrs) == {"answer": 42}


def test_a_workers_scan_of_the_primary_reads_its_refs_once(
    proxy: FaultProxy, moto_server: LocalS3, s3_bucket: str, s3_env: LocalS3
) -> None:
    """A worker's start looks for its job's commit with one read of the refs, not two.

    The look runs on every worker at once as the job starts; the branch's
    history read with the branch (``ancestry(branch=...)``) costs one request
    where looking its tip up and then the tip's history cost two. Counted by
    the proxy (no faults: it forwards everything).
    """
    url = f"s3://{s3_bucket}/repo"
    icechunk.Repository.create(icechunk_storage(url, moto_server.env))
    target = IcechunkTarget(name="primary", storage=icechunk_storage(url, proxy.env))
    driver = driver_for(target, job_id="j-u", meeting=None, scan=10)  # type: ignore[arg-type]
    driver.connect()  # the warm-up opens the repository
    before = proxy.counts()["requests"]
    assert driver.find_commit(None) is None
    assert proxy.counts()["requests"] - before == 1
    missing = IcechunkTarget(name="primary", storage=icechunk_storage(url + "-none", proxy.env))
    assert driver_for(missing, job_id="j-u", meeting=None, scan=10).find_commit(None) is None  # type: ignore[arg-type]


# ---- (b) and (c): cooperative jobs of real worker processes through the proxy -------------


def worker_env(base: dict[str, str], target: LocalS3) -> dict[str, str]:
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_", "AWS_")
    return {**{k: v for k, v in base.items() if not k.startswith(drop)}, **target.env}


def run_job(
    env: dict[str, str],
    bucket: str,
    total: int,
    *args: str,
    secret: str,
    worker: str = WORKER,
    timeout: float = 120,
) -> tuple[str, dict[int, tuple[int, str]]]:
    """Run one job's workers as processes; return its id and each ``(exit code, output)``."""
    name, uid = f"job-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    argv = [
        sys.executable,
        worker,
        "--repo",
        f"s3://{bucket}/repo",
        "--rendezvous",
        f"s3://{bucket}/rendezvous",
        *args,
    ]
    procs = start_workers(argv, total, job_name=name, job_uid=uid, secret=secret, env=env)
    done = {}
    for index, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=timeout)
        except Exception:
            for other in procs.values():
                other.kill()
            raise
        done[index] = (proc.returncode, out)
    return f"{name}-{uid}", done


@pytest.mark.slow
def test_a_job_completes_through_mixed_faults_and_readers_never_see_it_torn(
    proxy: FaultProxy, moto_server: LocalS3, s3_bucket: str, base_env: dict[str, str], secret: str
) -> None:
    # The first job creates the dataset with no faults: one worker, straight to moto.
    direct = worker_env(base_env, moto_server)
    _, first = run_job(direct, s3_bucket, 1, secret=secret)
    assert all(code == 0 for code, _ in first.values()), first
    repo = icechunk.Repository.open(icechunk_storage(f"s3://{s3_bucket}/repo", moto_server.env))
    before = repo.lookup_branch("main")

    # The second job: three worker processes, repository and rendezvous through the proxy.
    counts = proxy.counts()
    proxy.set_rates(**MIXED_10, **MIXED_DELAY, seed=11)
    faulty = worker_env(base_env, proxy)
    with Reader(f"s3://{s3_bucket}/repo", faulty) as reader:
        job_id, second = run_job(faulty, s3_bucket, 3, secret=secret)
        reader.settle()
    print(
        f"injected {grew(counts, proxy.counts())}; reader: {len(reader.seen)} reads, "
        f"{len(reader.errors)} errors {sorted(set(reader.errors))}"
    )
    proxy.clear()
    injected = grew(counts, proxy.counts())
    for index, (code, out) in second.items():
        assert code == 0, f"worker {index} ({injected}):\n{out[-3000:]}"
    assert '"status": "committed"' in second[2][1], second[2][1][-2000:]

    repo = icechunk.Repository.open(icechunk_storage(f"s3://{s3_bucket}/repo", moto_server.env))
    after = repo.lookup_branch("main")
    assert job_commits(repo, job_id) == [after]
    assert [info.id for info in repo.ancestry(branch="main")][:2] == [after, before]
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    np.testing.assert_array_equal(root["temp"][:], expected_temp(2 * ROWS))
    np.testing.assert_array_equal(root["time"][:], np.arange(2 * ROWS))
    assert root.attrs["rows_written"] == ROWS
    assert repo.list_branches() == {"main"}

    # Faults were really injected, and readers only ever saw the old or the new state.
    assert sum(injected.get(kind, 0) for kind in (*MIXED_10, "delay")) > 0, injected
    assert reader.seen, reader.errors
    assert {s for s, _, _ in reader.seen} <= {before, after}, reader.seen
    assert all(exact for _, _, exact in reader.seen), reader.seen
    assert {rows for _, rows, _ in reader.seen} <= {ROWS, 2 * ROWS}


@pytest.mark.slow
def test_above_the_breaking_rate_a_job_fails_clearly_and_commits_nothing(
    proxy: FaultProxy, moto_server: LocalS3, s3_bucket: str, base_env: dict[str, str], secret: str
) -> None:
    before = proxy.counts()
    proxy.set_rates(reset=0.9, seed=5)
    faulty = worker_env(base_env, proxy)
    job_id, done = run_job(
        faulty, s3_bucket, 3, "--timeout", "8", secret=secret, worker=__file__, timeout=240
    )
    injected = grew(before, proxy.counts())
    proxy.clear()
    for index, (code, out) in done.items():
        assert code != 0, f"worker {index} completed at 90% resets ({injected}):\n{out[-2000:]}"
    try:
        repo = icechunk.Repository.open(icechunk_storage(f"s3://{s3_bucket}/repo", moto_server.env))
    except icechunk.IcechunkError:
        pass  # the repository was never even created
    else:
        assert job_commits(repo, job_id) == []
    for index, (_, out) in done.items():
        assert is_clear(out), (
            f"worker {index} died of {final_error(out)[1] or 'no traceback'}:\n{out[-3000:]}"
        )


def _tight_worker() -> int:
    """``coop_worker.py`` with the retry budgets above: run as ``python test_faults.py ...``."""
    import coop_worker
    from icechunk_coop import CooperativeJob, IcechunkTarget

    config = icechunk.RepositoryConfig(
        storage=icechunk.StorageSettings(retries=icechunk.StorageRetriesSettings(**TIGHT_ICECHUNK))
    )

    class TightJob:
        @staticmethod
        def create(**kwargs: Any) -> CooperativeJob:
            return CooperativeJob.create(
                storage_options={"config_kwargs": TIGHT_BOTOCORE}, **kwargs
            )

    coop_worker.IcechunkTarget = functools.partial(IcechunkTarget, config=config)  # type: ignore[misc]
    coop_worker.CooperativeJob = TightJob  # type: ignore[misc,assignment]
    return coop_worker.main()


if __name__ == "__main__":
    sys.exit(_tight_worker())
