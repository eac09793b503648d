"""Running the workers of a job in a test: in this process, or as an Indexed Job's processes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from icechunk_coop.identity._worker import WorkerIdentity
from icechunk_coop.wire._ledger import job_of_commit
from icechunk_coop.wire._payload import SECRET_ENV

if TYPE_CHECKING:
    import icechunk

    from icechunk_coop.protocol._cooperative import CooperativeJob, WorkerOutcome


def run_in_process(
    make: Callable[[WorkerIdentity], CooperativeJob],
    total: int,
    run: Callable[[CooperativeJob], WorkerOutcome],
    *,
    indexes: Iterable[int] | None = None,
    job_name: str = "test",
    job_uid: str = "uid",
) -> list[WorkerOutcome]:
    """Run workers of one job in this process, in order (worker 0 first, the last one last).

    ``make`` builds each worker's job from its identity; ``run`` does its part
    (usually ``lambda job: job.run(...)``). Worker processes are the real
    thing (:func:`start_workers`); this is for fast, deterministic tests.
    """
    outcomes = []
    for index in range(total) if indexes is None else indexes:
        identity = WorkerIdentity(
            worker_index=index, workers_total=total, job_name=job_name, job_uid=job_uid
        )
        outcomes.append(run(make(identity)))
    return outcomes


def indexed_job_env(
    index: int, total: int, *, job_name: str, job_uid: str, secret: str | None = None
) -> dict[str, str]:
    """The variables an Indexed Job's pod gets (see ``examples/k8s``)."""
    env = {
        "JOB_COMPLETION_INDEX": str(index),
        "WORKERS_TOTAL": str(total),
        "JOB_NAME": job_name,
        "JOB_UID": job_uid,
    }
    if secret is not None:
        env[SECRET_ENV] = secret
    return env


def start_workers(
    argv: Sequence[str],
    total: int,
    *,
    job_name: str,
    job_uid: str,
    secret: str | None = None,
    env: Mapping[str, str] | None = None,
    indexes: Iterable[int] | None = None,
    extra_env: Mapping[int, Mapping[str, str]] | None = None,
) -> dict[int, subprocess.Popen[str]]:
    """Start ``argv`` once per index as a separate process, the way a Job starts pods.

    ``env`` is the base environment (default: this process's); ``extra_env``
    adds variables per index (e.g. ``{2: {CRASH_ENV: "between-commits"}}``).
    Output (stdout and stderr together) is piped; read it with
    ``proc.communicate()``. ``NO_COLOR=1`` is set unless ``env`` says
    otherwise, so icechunk's log lines arrive without colour codes even from
    a worker that imports ``icechunk`` before ``icechunk_coop``.
    """
    base = dict(os.environ if env is None else env)
    base.pop("WORKER_INDEX", None)  # explicit variables would win over the indexed job's
    base.setdefault("NO_COLOR", "1")  # the output is a pipe: no colour codes from icechunk
    procs: dict[int, subprocess.Popen[str]] = {}
    for index in range(total) if indexes is None else indexes:
        child = {
            **base,
            **indexed_job_env(index, total, job_name=job_name, job_uid=job_uid, secret=secret),
            **(extra_env or {}).get(index, {}),
        }
        procs[index] = subprocess.Popen(
            list(argv),
            env=child,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return procs


def job_commits(repo: icechunk.Repository, job_id: str, branch: str = "main") -> list[str]:
    """The snapshots on ``branch`` that job ``job_id`` committed (exactly one, normally)."""
    return [
        str(info.id)
        for info in repo.ancestry(branch=branch)
        if job_of_commit(info.metadata) == job_id
    ]
