"""Randomised schedules: real worker processes, crashes, restarts, twins, stragglers, faults.

A :class:`Schedule` says how one job of ``coop_worker.py`` processes runs:
how many workers, which pod of which index dies where (at a named crash
point, or SIGKILLed at a random moment), which index gets a second live copy,
who starts late, whether another writer commits to the repository meanwhile,
and what share of requests the fault proxy breaks. :func:`run_schedule` plays
it the way an Indexed Job controller would (a pod that dies is started again,
up to a backoff limit per index; exit 2 fails the index) against a moto
server behind the fault proxy, with a reader polling ``main`` the whole time,
and returns a :class:`Verdict`: the invariants it broke (none, always).

The invariants:
- the job commits exactly once to every target, with the data a serial run
  writes, and the other writer's commit survives; or it stops, every worker
  that failed with a clear error (ours, or icechunk's naming the operation),
  nothing of the job committed, and only where stopping is right: faults were
  injected, or the other writer's commit really overlaps the job's (both
  creating the root group of a new repository) and the job says so
  (``CommitConflictError``);
- a reader never sees a partial state: every snapshot of ``main`` it reads is
  the state before the job or after it, complete;
- no process outlives the schedule's deadline, no worker dies with an exit
  code nobody asked for, and the rendezvous holds nothing but the committed
  marker once every pod is done;
- no temporary branch is left, except one a pod was killed holding when no
  pod of the job came after it to clean up (a twin killed after its sibling
  finished): then ``icechunk-coop clean`` must remove it (the judge runs it),
  and the verdict counts it.

``tests/test_schedules.py`` runs a fixed set in CI; ``benchmarks/schedules.py``
runs hundreds and writes ``docs/schedules.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import icechunk
import numpy as np
import s3fs
import zarr
from hypothesis import strategies as st

from icechunk_coop import CoopError, icechunk_storage
from icechunk_coop.errors import CommitConflictError
from icechunk_coop.inspect import delete_temporary_branches, job_branch_prefix
from icechunk_coop.testing import (
    CRASH_ENV,
    CRASH_EXIT_CODE,
    CRASH_POINTS,
    FaultProxy,
    LocalS3,
    indexed_job_env,
    job_commits,
)

WORKER = str(Path(__file__).with_name("coop_worker.py"))
SECRET = "schedules-secret-0123456789abcdef"
COLS = 8
CREATION_CUT_SHORT = "its creation was cut short"  # the error of a repository half created
ROWS_PER_JOB = 16  # coop_worker's
BACKOFF_LIMIT = 3  # restarts per index, like backoffLimitPerIndex
WAIT_TIMEOUT = 90.0  # every worker's wait deadline (coop_worker --timeout)
DEADLINE = 240.0  # the whole schedule; past it, a hang
#: How a nominal fault rate R is split (of every request; lose_reply of writes), plus
#: R/2 of replies delayed by 100 ms.
MIX = {"reset": 0.3, "slowdown": 0.3, "error500": 0.2, "lose_reply": 0.2}
FAULT_KINDS = (*MIX, "delay")

#: The points each role can reach (a point a role never reaches is just not drawn).
_SETUP = ("before-prepare", "after-prepare", "after-publish-setup")
_WORK = ("started", "mid-work", "before-publish-result", "after-publish-result")
_FINAL = tuple(CRASH_POINTS[CRASH_POINTS.index("after-load-results") :])
ROLE_POINTS = {
    "first": ("started", *_SETUP, *_WORK[1:]),
    "middle": _WORK,
    "last": (*_WORK, *_FINAL),
    "only": tuple(CRASH_POINTS),
}


def role_of(index: int, total: int) -> str:
    if total == 1:
        return "only"
    return "first" if index == 0 else "last" if index == total - 1 else "middle"


@attrs.frozen(kw_only=True)
class Pod:
    """One pod start: its index, when it starts, and how it dies (if it does)."""

    index: int
    at: float = 0.0  # seconds after the schedule starts
    crash: str | None = None  # a crash point
    kill_after: float | None = None  # SIGKILL this many seconds after it starts
    twin: bool = False  # a second live copy of the index (never restarted)


@attrs.frozen(kw_only=True)
class Schedule:
    workers: int
    fresh: bool  # no repository yet: worker 0 creates it
    replica: bool
    interloper: float | None  # another writer commits this many seconds in
    faults: float  # nominal rate, split as MIX
    seed: int
    pods: tuple[Pod, ...]  # first starts and twins
    restarts: tuple[Pod, ...] = ()  # how each restart of an index dies, in order

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        raw = json.loads(text)
        raw["pods"] = tuple(Pod(**p) for p in raw["pods"])
        raw["restarts"] = tuple(Pod(**p) for p in raw["restarts"])
        return cls(**raw)


@attrs.frozen(kw_only=True)
class Verdict:
    schedule: Schedule
    outcome: str  # "committed" | "failed-clearly" | "violated"
    violations: tuple[str, ...]
    seconds: float
    crashes: tuple[tuple[str, str], ...]  # (point, role) of every pod that died there
    kills: int  # pods SIGKILLed at a random moment
    restarts: int
    twins: int
    faults: dict[str, int]  # injected by kind
    reads: int  # states of main the reader saw
    #: Temporary branches a killed pod left (no pod of the job ran after it), which
    #: ``icechunk-coop clean`` removed: allowed, counted.
    left: int = 0

    def to_json(self) -> str:
        raw = attrs.asdict(self)
        raw["schedule"] = json.loads(self.schedule.to_json())
        return json.dumps(raw, sort_keys=True)


# ---- drawing ------------------------------------------------------------------------------


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    """A random schedule: mostly 2-3 workers, a few crashes, sometimes twins, faults and a rival."""
    workers = draw(st.sampled_from([1, 2, 2, 3, 3, 3, 4]))
    replica = draw(st.booleans())

    def death(role: str) -> tuple[str | None, float | None]:
        how = draw(st.sampled_from(["none", "none", "point", "point", "kill"]))
        if how == "point":
            return draw(st.sampled_from(ROLE_POINTS[role])), None
        if how == "kill":
            return None, round(draw(st.floats(0.5, 6.0)), 2)
        return None, None

    pods, restarts = [], []
    for index in range(workers):
        role = role_of(index, workers)
        crash, kill = death(role)
        at = draw(st.sampled_from([0.0, 0.0, 0.0, 1.0, 3.0, 6.0]))  # some arrive late
        pods.append(Pod(index=index, at=at, crash=crash, kill_after=kill))
        if (crash or kill) and draw(st.integers(0, 3)) == 0:  # the restart dies too
            crash, kill = death(role)
            restarts.append(Pod(index=index, crash=crash, kill_after=kill))
    for index in draw(st.sets(st.integers(0, workers - 1), max_size=2)):
        role = role_of(index, workers)
        crash, kill = death(role) if draw(st.booleans()) else (None, None)
        at = draw(st.sampled_from([0.0, 0.5, 2.0, 5.0, 12.0]))
        pods.append(Pod(index=index, at=at, crash=crash, kill_after=kill, twin=True))
    return Schedule(
        workers=workers,
        fresh=draw(st.integers(0, 4)) == 0,
        replica=replica,
        interloper=draw(st.sampled_from([None, None, 0.5, 2.0, 5.0])),
        faults=draw(st.sampled_from([0.0, 0.0, 0.0, 0.02, 0.05, 0.1])),
        seed=draw(st.integers(0, 2**31)),
        pods=tuple(pods),
        restarts=tuple(restarts),
    )


def crash_matrix() -> Iterator[Schedule]:
    """Every crash point x every role it can reach, one schedule each, restarted once."""
    for role, (index, total) in {
        "first": (0, 3), "middle": (1, 3), "last": (2, 3), "only": (0, 1)
    }.items():  # fmt: skip
        for point in ROLE_POINTS[role]:
            yield Schedule(
                workers=total,
                fresh=False,
                replica=True,
                interloper=None,
                faults=0.0,
                seed=0,
                pods=tuple(Pod(index=i, crash=point if i == index else None) for i in range(total)),
            )


# ---- what a worker died of -----------------------------------------------------------------

_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): ", re.MULTILINE)


def final_error(out: str) -> tuple[type[BaseException] | None, str, str]:
    """The exception a worker died of (from its traceback): class, its name, what follows."""
    found = list(_EXCEPTION_LINE.finditer(out))
    if not found:
        return None, "", ""
    last = found[-1]
    module, _, name = last.group(1).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "builtins"), name)
    except (ImportError, AttributeError):
        cls = None
    return cls, last.group(1), out[last.start() :]


def is_clear(out: str) -> bool:
    """A CoopError subclass, or icechunk's own error naming the operation that failed."""
    cls, _, text = final_error(out)
    if cls is None:
        return False
    if issubclass(cls, CoopError):
        return True
    return cls.__module__.split(".")[0] == "icechunk" and "icechunk::" in text


# ---- the dataset ----------------------------------------------------------------------------


def expected_temp(rows: int) -> np.ndarray:
    r = np.arange(rows, dtype="f8")[:, None]
    return r * 100 + np.arange(COLS)[None, :]


def seed_repository(url: str, env: dict[str, str]) -> str:
    """A repository holding one earlier job's rows (what the schedule's job appends to)."""
    from coop_worker import ensure_arrays

    repo = icechunk.Repository.create(icechunk_storage(url, env))
    session = repo.writable_session("main")
    ensure_arrays(session.store)
    root = zarr.open_group(session.store, mode="a")
    root["temp"].resize((ROWS_PER_JOB, COLS))
    root["time"].resize((ROWS_PER_JOB,))
    root["temp"][:] = expected_temp(ROWS_PER_JOB)
    root["time"][:] = np.arange(ROWS_PER_JOB)
    return str(session.commit("an earlier job"))


def interlope(url: str, env: dict[str, str]) -> str:
    """Another writer: a commit to ``main`` that touches nothing the job writes."""
    repo = icechunk.Repository.open(icechunk_storage(url, env))
    for _ in range(20):
        session = repo.writable_session("main")
        zarr.open_group(session.store, mode="a").create_group("other").attrs["by"] = "rival"
        try:
            return str(session.commit("another writer"))
        except icechunk.ConflictError:
            time.sleep(0.2)
    raise AssertionError("the rival writer could not commit in 20 tries")


class Reader:
    """Polls ``main`` in a thread; records every state it read.

    A state is ``(snapshot, rows, exact)``: ``exact`` says the rows read are
    exactly what some committed job wrote (no NaN, no half-written row, no
    metadata of a job in progress). Errors are counted apart.
    """

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url, self.env = url, env
        self.seen: list[tuple[str, int, bool]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                repo = icechunk.Repository.open(icechunk_storage(self.url, self.env))
                session = repo.readonly_session("main")
                root = zarr.open_group(session.store, mode="r")
                temp = root["temp"][:]
                exact = bool(np.array_equal(temp, expected_temp(temp.shape[0])))
                exact = exact and "pending_rows" not in root.attrs
                exact = exact and bool(np.array_equal(root["time"][:], np.arange(temp.shape[0])))
                self.seen.append((session.snapshot_id, temp.shape[0], exact))
            except Exception as exc:
                self.errors.append(type(exc).__name__)
            self._stop.wait(0.05)

    def settle(self, reads: int = 2) -> None:
        """Wait (boundedly) for ``reads`` more reads, so the end state is among them."""
        target = len(self.seen) + reads
        for _ in range(600):
            if len(self.seen) >= target or not self._thread.is_alive():
                return
            self._stop.wait(0.05)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


# ---- playing a schedule --------------------------------------------------------------------


@attrs.define
class _Running:
    pod: Pod
    proc: subprocess.Popen[bytes]
    log: Any
    started: float
    killed: bool = False


@attrs.define
class _Ended:
    pod: Pod
    code: int
    output: str
    killed: bool
    started: float = 0.0  # monotonic: when the controller started it
    ended: float = 0.0  # and when it saw it gone

    @property
    def died(self) -> bool:
        """Killed at a crash point or by SIGKILL: it ran no cleanup of its own."""
        return self.killed or self.code == CRASH_EXIT_CODE

    @property
    def cleaned_up(self) -> bool:
        """It ended having run the job's cleanup (it committed, or found the job committed)."""
        return self.code == 0 and any(
            f'"status": "{status}"' in self.output for status in ("committed", "already-committed")
        )


def _controller(
    schedule: Schedule, argv: list[str], env: dict[str, str], job: tuple[str, str], log_dir: str
) -> tuple[list[_Ended], bool]:
    """Start, restart and kill pods as the schedule says; return how each ended, and whether
    everything ended before the deadline."""
    name, uid = job
    t0 = time.monotonic()
    pending = sorted(schedule.pods, key=lambda p: p.at)
    restarts = {i: [p for p in schedule.restarts if p.index == i] for i in range(schedule.workers)}
    used = Counter[int]()
    running: list[_Running] = []
    ended: list[_Ended] = []

    def start(pod: Pod) -> None:
        child = {
            **env,
            **indexed_job_env(pod.index, schedule.workers, job_name=name, job_uid=uid,
                              secret=SECRET),
        }  # fmt: skip
        if pod.crash:
            child[CRASH_ENV] = pod.crash
        log = tempfile.NamedTemporaryFile(dir=log_dir, suffix=".log", delete=False)  # noqa: SIM115
        proc = subprocess.Popen(argv, env=child, stdout=log, stderr=subprocess.STDOUT)
        running.append(_Running(pod=pod, proc=proc, log=log, started=time.monotonic()))

    while pending or running:
        now = time.monotonic() - t0
        if now > DEADLINE:
            for r in running:
                r.proc.kill()
                r.proc.wait()
            return ended, False
        while pending and pending[0].at <= now:
            start(pending.pop(0))
        for r in list(running):
            due = r.pod.kill_after is not None and not r.killed
            if due and time.monotonic() - r.started >= r.pod.kill_after and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGKILL)
                r.killed = True
            code = r.proc.poll()
            if code is None:
                continue
            running.remove(r)
            r.log.close()
            output = Path(r.log.name).read_text(errors="replace")
            ended.append(_Ended(pod=r.pod, code=code, output=output, killed=r.killed,
                                started=r.started, ended=time.monotonic()))  # fmt: skip
            if code == 0 or r.pod.twin:
                continue
            if code == 2 or used[r.pod.index] >= BACKOFF_LIMIT:
                continue  # the index failed for good (FailIndex, or out of restarts)
            nxt = used[r.pod.index]
            used[r.pod.index] += 1
            plan = restarts[r.pod.index]
            again = plan[nxt] if nxt < len(plan) else Pod(index=r.pod.index)
            start(attrs.evolve(again, at=0.0))
        time.sleep(0.05)
    return ended, True


def run_schedule(
    schedule: Schedule, proxy: FaultProxy, moto: LocalS3, logs: Path | None = None
) -> Verdict:
    """Play ``schedule`` once against a fresh bucket; check every invariant.

    ``logs``: a folder that keeps every pod's output (named by start order,
    index and how it ended), to read what happened in a violating schedule.
    """
    bucket = f"sched-{uuid.uuid4().hex[:10]}"
    moto.create_bucket(bucket)
    direct = moto.env
    repo_url, replica_url = f"s3://{bucket}/repo", f"s3://{bucket}/replica"
    rv_url = f"s3://{bucket}/rendezvous"
    before: set[str] = set()
    if not schedule.fresh:
        before.add(seed_repository(repo_url, direct))
        if schedule.replica:
            seed_repository(replica_url, direct)
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_", "AWS_")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(drop)},
        **proxy.env,
        "ICECHUNK_LOG": "error",
    }
    argv = [sys.executable, WORKER, "--repo", repo_url, "--rendezvous", rv_url,
            "--timeout", str(WAIT_TIMEOUT)]  # fmt: skip
    if schedule.replica:
        argv += ["--replica", replica_url]
    name, uid = f"s{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:8]
    job_id = f"{name}-{uid}"

    proxy.clear()
    counts = proxy.counts()
    rate = schedule.faults
    proxy.set_rates(**{k: rate * share for k, share in MIX.items()},
                    delay=rate / 2, delay_ms=100, seed=schedule.seed)  # fmt: skip
    started = time.monotonic()
    rival: list[str] = []
    timer = None
    if schedule.interloper is not None:

        def rival_commit() -> None:
            with contextlib.suppress(Exception):  # a fresh repo may not exist yet
                for _ in range(100):
                    with contextlib.suppress(Exception):
                        rival.append(interlope(repo_url, direct))
                        return
                    time.sleep(0.1)

        timer = threading.Timer(schedule.interloper, rival_commit)
    with tempfile.TemporaryDirectory() as log_dir, Reader(repo_url, direct) as reader:
        if timer:
            timer.start()
        ended, in_time = _controller(schedule, argv, env, (name, uid), log_dir)
        if timer:
            timer.join(60)
        proxy.clear()
        reader.settle()
    seconds = time.monotonic() - started
    after = proxy.counts()
    faults = {k: after.get(k, 0) - counts.get(k, 0) for k in FAULT_KINDS}
    faults = {k: v for k, v in faults.items() if v}

    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        for n, e in enumerate(ended):
            kind = "twin" if e.pod.twin else "pod"
            (logs / f"{n:02d}-{kind}{e.pod.index}-exit{e.code}.log").write_text(e.output)
    left: list[str] = []
    violations = _judge(schedule, ended, in_time, job_id, bucket, moto, reader, before, rival, left)
    committed = not any(v.startswith("nothing committed") for v in violations)
    crashes = tuple(
        (e.pod.crash, role_of(e.pod.index, schedule.workers))
        for e in ended
        if e.pod.crash and e.code == CRASH_EXIT_CODE
    )
    failed_clearly = [v for v in violations if v.startswith("nothing committed")]
    real = [v for v in violations if not v.startswith("nothing committed")]
    outcome = "violated" if real else ("committed" if committed else "failed-clearly")
    if failed_clearly and not _may_stop(schedule, ended):
        outcome, real = "violated", [*real, *failed_clearly]
    return Verdict(
        schedule=schedule,
        outcome=outcome,
        violations=tuple(real),
        seconds=round(seconds, 2),
        crashes=crashes,
        kills=sum(1 for e in ended if e.killed),
        restarts=sum(1 for e in ended if not e.pod.twin) - schedule.workers,
        twins=sum(1 for p in schedule.pods if p.twin),
        faults=faults,
        reads=len(reader.seen),
        left=len(left),
    )


def _conflict(e: _Ended) -> bool:
    cls, _, _ = final_error(e.output)
    return cls is not None and issubclass(cls, CommitConflictError)


def _may_stop(schedule: Schedule, ended: list[_Ended]) -> bool:
    """Whether stopping (with clear errors) is a right outcome for this schedule."""
    rival_conflict = schedule.interloper is not None and any(_conflict(e) for e in ended)
    # Worker 0 killed while icechunk created the repository leaves a prefix that
    # is no repository and refuses every later create: only an operator may
    # delete objects from a store, so the job stops saying which ones.
    cut_short = any(CREATION_CUT_SHORT in e.output for e in ended)
    return schedule.faults > 0 or rival_conflict or cut_short


def _excused(branch: str, job_id: str, ended: list[_Ended]) -> bool:
    """Whether a temporary branch may outlive the job: nothing could have removed it.

    It is this job's, the pod that made it (the log names it) was killed while
    holding it, and no pod that started after that death ended having run the
    job's cleanup (such a pod lists and deletes every branch of the job). A
    killed pod that comes back, or any later pod finding the job committed,
    removes it; a twin killed after its sibling cleaned up has no one after it,
    so its branch is left for ``icechunk-coop clean``, which the judge runs.
    """
    if not branch.startswith(job_branch_prefix(job_id)):
        return False
    makers = [e for e in ended if branch in e.output]
    if len(makers) != 1 or not makers[0].died:
        return False
    death = makers[0].ended
    return not any(e.started > death and e.cleaned_up for e in ended)


def _judge(
    schedule: Schedule,
    ended: list[_Ended],
    in_time: bool,
    job_id: str,
    bucket: str,
    moto: LocalS3,
    reader: Reader,
    before: set[str],
    rival: list[str],
    left: list[str] | None = None,
) -> list[str]:
    """Every invariant the run broke, as sentences (empty: none).

    ``left`` gets the temporary branches that are allowed to outlive the job
    (see :func:`_excused`), after the job's ``clean`` removed them.
    """
    broken: list[str] = []
    if not in_time:
        broken.append(f"hang: pods still running after {DEADLINE:.0f} s")
    for e in ended:
        expected = {0} | ({CRASH_EXIT_CODE} if e.pod.crash else set())
        if e.killed:
            expected |= {-signal.SIGKILL, 0}
        if e.code in expected:
            continue
        if e.code in (1, 2) and _may_stop(schedule, ended) and is_clear(e.output):
            continue  # a clear failure where one may happen; judged by what landed below
        _, err, _ = final_error(e.output)
        broken.append(
            f"worker {e.pod.index} ({'twin' if e.pod.twin else 'pod'}) exited {e.code}"
            f" ({err or 'no exception'}): {e.output[-600:]!r}"
        )
    targets = ["repo", "replica"] if schedule.replica else ["repo"]
    commits: dict[str, int] = {}
    env = moto.env
    for target in targets:
        try:
            repo = icechunk.Repository.open(icechunk_storage(f"s3://{bucket}/{target}", env))
        except Exception as exc:
            commits[target] = 0
            broken.append(f"nothing committed: {target} does not open ({type(exc).__name__})")
            continue
        mine = job_commits(repo, job_id)
        commits[target] = len(mine)
        if len(mine) > 1:
            broken.append(f"{target}: the job committed {len(mine)} times")
        branches = sorted(repo.list_branches() - {"main"})
        excused = [b for b in branches if _excused(b, job_id, ended)]
        if excused:
            delete_temporary_branches(repo, [job_id])  # what `icechunk-coop clean --job` does
            if left is not None:
                left += excused
        if repo.list_branches() != {"main"} or len(excused) < len(branches):
            broken.append(f"{target}: branches left {branches}")
        if not mine:
            continue
        root = zarr.open_group(repo.readonly_session("main").store, mode="r")
        rows = (0 if schedule.fresh else ROWS_PER_JOB) + ROWS_PER_JOB
        if not np.array_equal(root["temp"][:], expected_temp(rows)):
            broken.append(f"{target}: temp differs from a serial run's")
        if not np.array_equal(root["time"][:], np.arange(rows)):
            broken.append(f"{target}: time differs from a serial run's")
        if root.attrs.get("rows_written") != ROWS_PER_JOB or "pending_rows" in root.attrs:
            broken.append(f"{target}: final metadata wrong: {dict(root.attrs)}")
        if target == "repo" and rival:
            ancestry = {str(i.id) for i in repo.ancestry(branch="main")}
            if not set(rival) <= ancestry:
                broken.append("repo: the other writer's commit was lost")
    if set(commits.values()) == {0}:
        broken.append("nothing committed: the job stopped (clear errors only)")
    elif 0 in commits.values() and all(e.code == 0 for e in ended):
        # (with a failed pod: stopped between targets; judged by the workers' errors)
        broken.append(f"partly committed although every pod succeeded: {commits}")
    # The reader only ever saw complete states: before the job, the rival's, or after.
    rows_seen = {rows for _, rows, _ in reader.seen}
    allowed_rows = {ROWS_PER_JOB, 2 * ROWS_PER_JOB} if not schedule.fresh else {ROWS_PER_JOB}
    if not all(exact for _, _, exact in reader.seen) or not rows_seen <= allowed_rows:
        torn = [s for s in reader.seen if not s[2] or s[1] not in allowed_rows][:3]
        broken.append(f"a reader saw a partial state: {torn}")
    # Nothing left in the rendezvous but the committed marker, once the job committed.
    if commits and min(commits.values()) >= 1:
        fs = s3fs.S3FileSystem(
            key=env["AWS_ACCESS_KEY_ID"],
            secret=env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=moto.endpoint_url,
            skip_instance_cache=True,
        )
        left = sorted(
            p.rsplit("/", 1)[-1]
            for p in fs.find(f"{bucket}/rendezvous")
            if not p.endswith("/committed")
        )
        if left:
            broken.append(f"rendezvous left {left}")
    return broken
