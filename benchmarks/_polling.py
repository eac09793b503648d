"""What a waiting worker costs: object-store requests per minute while nobody arrives.

Every waiter polls its own bucket through the counting proxy, so the proxy's
per-bucket ledger is exactly what that waiter would be billed for. The
state seen by a waiter is the realistic one: the last worker has already
published its own result (index N-1) and waits for the N-1 others; a worker
waiting for the setup sees an empty namespace.

Strategies, waiting for N results:

``coop``       icechunk_coop ``Rendezvous.wait_for_all`` with the default
               ``WaitPolicy`` (one LIST per poll, exponential backoff from
               0.25 s with equal jitter, pauses of 5-10 s once capped).
``exists-5s``  an existence check (s3fs ``exists``) of each missing per-index
               file, every 5 s.
``head-1s``    a HEAD of each missing per-index file, every 1 s.
``ls-10s``     reformatters today (``wait_for_workers``): count the files of
               the results prefix with one ``ls``, every 10 s.

Waiting for the setup (N does not matter):

``coop-setup``      ``Rendezvous.wait_for("setup")``, default policy: a GET of
                    the blob and one of its failure marker per poll.
``ls-setup-5s``     reformatters today (``parallel_setup``): ``ls`` of the
                    setup prefix, every 5 s.

Fixed intervals are start-to-start: a sweep of N checks runs on a thread pool
(16-32 at once, as any implementation that keeps its interval would) and the
next sweep starts ``interval`` after the previous one started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import s3fs
from _servers import S3
from botocore.exceptions import ClientError

from icechunk_coop import WaitPolicy
from icechunk_coop.errors import WaitTimeoutError
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._records import SETUP, result_name

#: S3 Standard, us-east-1 (RESEARCH.md): LIST $0.005 / 1k, GET/HEAD $0.0004 / 1k.
#: PUT, COPY and POST are billed like LIST; DELETE is free.
PRICE_PER_REQUEST: dict[str, float] = {
    "LIST": 0.005 / 1000,
    "PUT": 0.005 / 1000,
    "COPY": 0.005 / 1000,
    "POST": 0.005 / 1000,
    "GET": 0.0004 / 1000,
    "HEAD": 0.0004 / 1000,
    "OTHER": 0.0004 / 1000,
    "DELETE": 0.0,
}

_SECRET = secrets.token_hex(32).encode()


@dataclass(frozen=True)
class Strategy:
    key: str
    label: str
    per_n: bool  # waits for N results (else: for the setup)
    backoff: bool  # has a warm-up before its steady rhythm
    replicas: int  # independent waiters averaged (jittered ones need several)
    requests_per_second: Callable[[int], float]  # rough load, to schedule groups


def strategies(replicas: int) -> dict[str, Strategy]:
    return {
        s.key: s
        for s in (
            Strategy(
                "coop",
                "icechunk_coop wait_for_all (LIST, backoff 0.25-10 s)",
                True,
                True,
                replicas,
                lambda n: 0.3,
            ),
            Strategy(
                "exists-5s",
                "per-index exists() every 5 s",
                True,
                False,
                1,
                lambda n: 2 * n / 5,
            ),
            Strategy("head-1s", "per-index HEAD every 1 s", True, False, 1, lambda n: float(n)),
            Strategy(
                "ls-10s",
                "reformatters today: ls-count every 10 s",
                True,
                False,
                1,
                lambda n: 0.1,
            ),
            Strategy(
                "coop-setup",
                "icechunk_coop wait_for(setup), default",
                False,
                True,
                replicas,
                lambda n: 1.0,
            ),
            Strategy(
                "ls-setup-5s",
                "reformatters today: ls setup/ every 5 s",
                False,
                False,
                1,
                lambda n: 0.4,
            ),
        )
    }


@dataclass
class PollTask:
    strategy: Strategy
    n: int | None
    bucket: str = field(default_factory=lambda: f"poll-{uuid.uuid4().hex[:12]}")
    info: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _fs(s3: S3, **extra: Any) -> s3fs.S3FileSystem:
    # What the production code opens: no instance cache, no listings cache.
    return s3fs.S3FileSystem(
        skip_instance_cache=True,
        use_listings_cache=False,
        endpoint_url=s3.proxy_url,
        key=s3.access_key_id,
        secret=s3.secret_access_key,
        client_kwargs={"region_name": s3.region},
        **extra,
    )


def _sweeps(
    check: Callable[[str], bool],
    names: Sequence[str],
    *,
    interval: float,
    seconds: float,
    threads: int,
) -> dict[str, Any]:
    """Check every name not seen yet, every ``interval`` s (start to start), for ``seconds``."""
    seen: set[str] = set()
    durations: list[float] = []
    overruns = 0
    end = time.monotonic() + seconds
    next_start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        while time.monotonic() < end:
            started = time.monotonic()
            pending = [n for n in names if n not in seen]
            found = list(pool.map(check, pending)) if len(pending) > 1 else [check(pending[0])]
            seen.update(n for n, ok in zip(pending, found, strict=True) if ok)
            durations.append(time.monotonic() - started)
            if len(seen) == len(names):
                break
            next_start += interval
            if next_start < time.monotonic():
                overruns += 1
                next_start = time.monotonic()
            if next_start >= end:
                break
            time.sleep(max(0.0, next_start - time.monotonic()))
    return {
        "sweeps": len(durations),
        "overruns": overruns,
        "sweep_seconds_mean": sum(durations) / len(durations) if durations else 0.0,
        "sweep_seconds_max": max(durations, default=0.0),
    }


# ---- one waiter per strategy: prepare() before the clock starts, wait() during it ----------


class _Waiter:
    def __init__(self, s3: S3, task: PollTask, replica: int) -> None:
        self.s3, self.task, self.replica = s3, task, replica
        self.job = f"wait-{replica}"

    @property
    def n(self) -> int:
        return self.task.n or 1

    def prepare(self) -> None:
        pass

    def wait(self, seconds: float) -> dict[str, Any]:
        raise NotImplementedError


class _Coop(_Waiter):
    """The last worker of a cooperative job, waiting for everyone's result."""

    def _rendezvous(self, *, counted: bool, seconds: float = 1.0) -> Rendezvous:
        options: dict[str, Any] = {}
        if not counted:
            options["endpoint_url"] = self.s3.direct_url
        return Rendezvous.for_job(
            f"s3://{self.task.bucket}/rendezvous",
            job_id=self.job,
            sealer=Sealer(job_id=self.job, secret=_SECRET),
            storage_options=options,
            policy=WaitPolicy(timeout=seconds),
        )

    def prepare(self) -> None:
        seed = self._rendezvous(counted=False)
        seed.publish(SETUP, {"seeded": True})
        seed.publish(result_name(self.n - 1), {"index": self.n - 1})

    def wait(self, seconds: float) -> dict[str, Any]:
        rv = self._rendezvous(counted=True, seconds=seconds)
        with contextlib.suppress(WaitTimeoutError):  # the expected end: nobody came
            rv.wait_for_all([result_name(i) for i in range(self.n)])
        return {"library_counter": dict(rv.requests.counts)}


class _CoopSetup(_Coop):
    """Any other worker of a cooperative job, waiting for worker 0's setup."""

    def prepare(self) -> None:
        pass  # nothing published yet

    def wait(self, seconds: float) -> dict[str, Any]:
        rv = self._rendezvous(counted=True, seconds=seconds)
        with contextlib.suppress(WaitTimeoutError):  # the expected end: nobody came
            rv.wait_for(SETUP)
        return {"library_counter": dict(rv.requests.counts)}


class _PerIndex(_Waiter):
    interval = 5.0
    threads = 16

    def paths(self) -> list[str]:
        return [f"{self.task.bucket}/{self.job}/results/{i}.json" for i in range(self.n)]

    def prepare(self) -> None:
        client = self.s3.boto3_client(counted=False)
        own = self.paths()[-1].split("/", 1)[1]
        client.put_object(Bucket=self.task.bucket, Key=own, Body=b"{}")


class _Exists5s(_PerIndex):
    def wait(self, seconds: float) -> dict[str, Any]:
        fs = _fs(self.s3)

        def check(path: str) -> bool:
            fs.invalidate_cache(path)
            return bool(fs.exists(path))

        return _sweeps(
            check, self.paths(), interval=self.interval, seconds=seconds, threads=self.threads
        )


class _Head1s(_PerIndex):
    interval = 1.0
    threads = 32

    def wait(self, seconds: float) -> dict[str, Any]:
        client = self.s3.boto3_client(counted=True, max_pool=self.threads)

        def check(path: str) -> bool:
            bucket, key = path.split("/", 1)
            try:
                client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                    return False
                raise
            return True

        return _sweeps(
            check, self.paths(), interval=self.interval, seconds=seconds, threads=self.threads
        )


class _Ls10s(_PerIndex):
    """One listing of the results prefix per poll, compared with N."""

    interval = 10.0

    def wait(self, seconds: float) -> dict[str, Any]:
        fs = _fs(self.s3)
        base = f"{self.task.bucket}/{self.job}/results"

        def count(_: str) -> bool:
            fs.invalidate_cache(base)
            try:
                return len(fs.ls(base, detail=False)) >= self.n
            except FileNotFoundError:
                return False

        return _sweeps(count, [base], interval=self.interval, seconds=seconds, threads=1)


class _LsSetup5s(_Waiter):
    """reformatters' setup wait: list the (still missing) setup prefix."""

    def wait(self, seconds: float) -> dict[str, Any]:
        fs = _fs(self.s3)
        base = f"{self.task.bucket}/{self.job}/setup"

        def present(_: str) -> bool:
            fs.invalidate_cache(base)
            try:
                return bool(fs.ls(base, detail=False))
            except FileNotFoundError:
                return False

        return _sweeps(present, [base], interval=5.0, seconds=seconds, threads=1)


_WAITERS: dict[str, type[_Waiter]] = {
    "coop": _Coop,
    "exists-5s": _Exists5s,
    "head-1s": _Head1s,
    "ls-10s": _Ls10s,
    "coop-setup": _CoopSetup,
    "ls-setup-5s": _LsSetup5s,
}


# ---- scheduling and accounting --------------------------------------------------------------


def warmup_seconds(policy: WaitPolicy) -> float:
    """Expected time until the backoff reaches its cap (``_waiting.poll_until``'s schedule).

    Each pause is a geometric part capped at ``max_interval / 2`` plus a random
    part uniform below the same value: on average 1.5 x the geometric part.
    """
    half, total, attempt = policy.max_interval / 2, 0.0, 1
    while True:
        grown = policy.initial_interval * policy.multiplier ** (attempt - 1)
        if grown >= half or attempt > 200:
            return total
        total += 1.5 * grown
        attempt += 1


def steady_polls_per_minute(policy: WaitPolicy) -> float:
    """Expected polls per minute once the backoff is capped: one per 0.75 x max_interval."""
    return 60.0 / (0.75 * policy.max_interval)


def groups(tasks: Sequence[PollTask], budget: float) -> list[list[PollTask]]:
    """Pack tasks into concurrent groups whose rough load stays under ``budget`` req/s."""
    ordered = sorted(
        tasks, key=lambda t: -t.strategy.requests_per_second(t.n or 1) * t.strategy.replicas
    )
    packed: list[tuple[float, list[PollTask]]] = []
    for task in ordered:
        load = task.strategy.requests_per_second(task.n or 1) * task.strategy.replicas
        for i, (used, members) in enumerate(packed):
            if used + load <= budget:
                packed[i] = (used + load, [*members, task])
                break
        else:
            packed.append((load, [task]))
    return [members for _, members in reversed(packed)]


def warm_up(s3: S3) -> None:
    """Load and initialise every client stack once, on a bucket nobody measures."""
    bucket = f"warmup-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    fs = _fs(s3)
    with contextlib.suppress(FileNotFoundError):
        fs.ls(f"{bucket}/nothing")
    fs.exists(f"{bucket}/nothing")
    with contextlib.suppress(ClientError):
        s3.boto3_client(counted=True).head_object(Bucket=bucket, Key="nothing")
    rv = Rendezvous.for_job(
        f"s3://{bucket}/rendezvous",
        job_id="warmup",
        sealer=Sealer(job_id="warmup", secret=_SECRET),
        policy=WaitPolicy(timeout=0.01),
    )
    rv.arrived()


def _wait_all(waiters: Sequence[_Waiter], start_at: float, seconds: float) -> dict[str, Any]:
    """Run the waiters of one task (threads of one process) from ``start_at`` for ``seconds``."""
    infos: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(waiter: _Waiter) -> None:
        time.sleep(max(0.0, start_at - time.time()))
        try:
            info = waiter.wait(seconds)
        except Exception as exc:  # reported, never hidden
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            infos.append(info)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in waiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return {"info": infos, "errors": errors}


def _child_argv(s3: S3, task: PollTask, seconds: float) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--strategy",
        task.strategy.key,
        "--n",
        str(task.n or 1),
        "--bucket",
        task.bucket,
        "--replicas",
        str(task.strategy.replicas),
        "--seconds",
        str(seconds),
        "--direct-url",
        s3.direct_url,
        "--proxy-url",
        s3.proxy_url,
    ]


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def run_group(s3: S3, group: Sequence[PollTask], seconds: float) -> float:
    """Run every task of ``group`` at once, each in its own process; return the start time.

    A process per task is a waiting worker as it runs in production: its own
    interpreter, event loop and connection pool, not sharing a GIL with the
    other strategies. Each child prepares and warms up, says READY, and
    starts when the harness sends the common start time.
    """
    children: list[tuple[PollTask, subprocess.Popen[str], IO[str]]] = []
    with contextlib.ExitStack() as stack:
        for task in group:
            s3.create_bucket(task.bucket)
            log: IO[str] = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
            proc = subprocess.Popen(
                [*_child_argv(s3, task, seconds)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            stack.callback(_reap, proc)
            children.append((task, proc, log))
        for task, proc, err in children:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                err.seek(0)
                raise RuntimeError(
                    f"poller {task.strategy.key}@{task.n}: {line}{err.read()[-2000:]}"
                )
        start_at = time.time() + 0.5
        for _, proc, _ in children:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        for task, proc, err in children:
            out, _ = proc.communicate(timeout=seconds + 180)
            result = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not result:
                err.seek(0)
                task.errors.append(f"exit {proc.returncode}: {err.read()[-1000:]}")
                continue
            payload = json.loads(result[-1][len("RESULT ") :])
            task.info.extend(payload["info"])
            task.errors.extend(payload["errors"])
    time.sleep(0.3)  # the proxy records a request when its answer is back
    return start_at


def account(
    s3: S3, task: PollTask, start_at: float, seconds: float, warmup: float
) -> dict[str, Any]:
    """Requests per waiting worker per minute (whole window and steady state) and $."""
    events = s3.events(task.bucket)
    replicas = task.strategy.replicas
    window = Counter(kind for t, kind, _ in events)
    per_min = {k: v / replicas / (seconds / 60) for k, v in window.items()}
    steady: dict[str, float] | None = None
    if not task.strategy.backoff:
        steady = per_min
    elif seconds - warmup >= 5:
        late = Counter(kind for t, kind, _ in events if t >= start_at + warmup)
        steady = {k: v / replicas / ((seconds - warmup) / 60) for k, v in late.items()}
    basis = steady if steady is not None else per_min  # an hour-long wait is mostly steady
    dollars = sum(PRICE_PER_REQUEST.get(k, 0.0004 / 1000) * v * 60 * 1000 for k, v in basis.items())
    library: Counter[str] = Counter()
    for info in task.info:
        library.update(info.get("library_counter", {}))
    sweeps = [i for i in task.info if "sweeps" in i]
    return {
        "strategy": task.strategy.key,
        "label": task.strategy.label,
        "n": task.n,
        "bucket": task.bucket,
        "waiters": replicas,
        "seconds": seconds,
        "requests": dict(window),
        "per_worker_per_minute": per_min,
        "per_worker_per_minute_total": sum(per_min.values()),
        "steady_per_worker_per_minute": steady,
        "steady_per_worker_per_minute_total": None if steady is None else sum(steady.values()),
        "steady_after_seconds": warmup if task.strategy.backoff else 0.0,
        "basis_per_worker_per_minute_total": sum(basis.values()),
        "usd_per_1000_worker_hours": dollars,
        "library_counter_per_worker": {k: v / replicas for k, v in library.items()} or None,
        "sweeps": sweeps[0] if sweeps else None,
        "errors": task.errors,
    }


def _child_main() -> int:
    """One polling task in its own process (see ``run_group``)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--direct-url", required=True)
    parser.add_argument("--proxy-url", required=True)
    args = parser.parse_args()
    s3 = S3(direct_url=args.direct_url, proxy_url=args.proxy_url)
    os.environ.update(s3.env())
    strategy = strategies(args.replicas)[args.strategy]
    task = PollTask(strategy, args.n if strategy.per_n else None, bucket=args.bucket)
    waiters = [_WAITERS[strategy.key](s3, task, r) for r in range(strategy.replicas)]
    for waiter in waiters:
        waiter.prepare()
    warm_up(s3)
    print("READY", flush=True)
    start_at = float(sys.stdin.readline())
    print("RESULT " + json.dumps(_wait_all(waiters, start_at, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(_child_main())
