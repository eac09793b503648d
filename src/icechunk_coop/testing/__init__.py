"""Local servers for testing pipelines built on icechunk-coop: no cloud needed.

Icechunk talks to storage from Rust, so an in-process mock of botocore never
reaches it; a real S3 server on loopback does. :func:`local_s3` runs moto's
S3 server (install ``moto[server]``) as a separate process, which also keeps
it from competing for the GIL with busy workers::

    from icechunk_coop.testing import local_s3

    with local_s3() as s3:
        s3.create_bucket("demo")
        env = {**os.environ, **s3.env}  # for worker processes
        ...  # s3://demo/... now works for icechunk, s3fs and boto3 alike

:func:`serve` is the general piece: start any server process and wait until
it answers HTTP, with a deadline, stopping it on the way out.

:func:`fault_proxy` puts a fault-injecting proxy (its own process) in front
of such a server: 503 SlowDown, 500, connection resets, slow replies and
writes that land but whose reply is lost, each at a rate you set and can
change while it runs. Point workers at ``proxy.env`` instead of ``s3.env``::

    with local_s3() as s3, fault_proxy(s3.endpoint_url, slowdown=0.05, reset=0.05) as proxy:
        env = {**os.environ, **proxy.env}
        ...
        proxy.counts()  # {"requests": ..., "slowdown": ..., "reset": ..., ...}

For the jobs themselves: :func:`run_in_process` runs every worker of a job
one after another in this process (fork/merge does not care which process a
fork lived in); :func:`start_workers` starts them as real processes with an
Indexed Job's environment; :func:`job_commits` counts what a job committed.
Faults go in at the protocol's named crash points (:data:`CRASH_POINTS`):
:func:`at_crash_point` runs a callable there in this process (by default it
raises :class:`Killed`, a pod dying), and the environment variable
:data:`CRASH_ENV` makes a worker process exit there.
"""

from icechunk_coop.protocol._crash import CRASH_ENV, CRASH_EXIT_CODE
from icechunk_coop.protocol._crash import POINTS as CRASH_POINTS
from icechunk_coop.testing._crash_points import Killed, at_crash_point, crash_point
from icechunk_coop.testing._servers import (
    LOOPBACK,
    FaultProxy,
    LocalS3,
    fault_proxy,
    free_port,
    local_s3,
    serve,
)
from icechunk_coop.testing._workers import (
    indexed_job_env,
    job_commits,
    run_in_process,
    start_workers,
)

__all__ = [
    "CRASH_ENV",
    "CRASH_EXIT_CODE",
    "CRASH_POINTS",
    "LOOPBACK",
    "FaultProxy",
    "Killed",
    "LocalS3",
    "at_crash_point",
    "crash_point",
    "fault_proxy",
    "free_port",
    "indexed_job_env",
    "job_commits",
    "local_s3",
    "run_in_process",
    "serve",
    "start_workers",
]
