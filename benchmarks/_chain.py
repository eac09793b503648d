"""The critical chain of a job, from the counting proxy's request log.

Every worker signs its requests with its own access key (``w<i>``, see
``_servers.S3.worker_env``), so the proxy's log says who sent what and when
(``_proxy.py``: start and end of every request). The chain the job waits on
is worker 0's requests until the setup has landed, then the last worker's
requests from the moment the setup was visible until the primary's
compare-and-set, in phases:

- **setup**: worker 0, from its first request after the release to the end
  of its setup PUT;
- **wait for setup**: the last worker, from then to the end of its first
  read that returned the setup;
- **work**: its requests until its result PUT begins (the chunks it writes);
- **publish**: its result PUT;
- **wait for results**: from then to the end of the last result it read;
- **commit**: from then to the end of the primary's compare-and-set (the
  last write to the repository before the ``committed`` marker's PUT).

Within a phase, requests that overlap in time ran concurrently and cost one
round trip together: the **round trips** of a phase are the groups of
overlapping requests, one after another. That is the count a user multiplies
by the per-request latency of their store; seconds here also hold the CPU
time between requests on a shared machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Request = tuple[float, float, str, str, str, str, int]
PHASES = ("setup", "wait for setup", "work", "publish", "wait for results", "commit")


def rounds(requests: Sequence[Request]) -> int:
    """How many groups of overlapping requests, one after another."""
    count, end = 0, float("-inf")
    for start, stop, *_ in sorted(requests):
        if start >= end:
            count += 1
            end = stop
        else:
            end = max(end, stop)
    return count


def _between(reqs: Sequence[Request], after: float, until: float) -> list[Request]:
    return [r for r in reqs if r[0] >= after and r[1] <= until]


def critical_chain(
    log: Sequence[Request], *, workers: int, job_id: str, released: float = 0.0
) -> dict[str, Any]:
    """Seconds and round trips of each phase of the chain (see the module's docstring).

    ``released``: when the workers were let go (Unix time); requests before it
    (clients warming up while the job was built) are start-up, not the chain.
    """
    ok = [r for r in log if r[6] < 300 and r[0] >= released]
    rv = f"/rendezvous/{job_id}/"
    first, last = [r for r in ok if r[2] == "w0"], [r for r in ok if r[2] == f"w{workers - 1}"]

    def blob(r: Request, name: str) -> bool:
        return r[5].endswith(rv + name)

    setup_put = min((r for r in first if r[3] == "PUT" and blob(r, "setup")), key=lambda r: r[1])
    begin = min(r[0] for r in first)
    landed = setup_put[1]
    seen = min(r[1] for r in last if r[3] == "GET" and blob(r, "setup") and r[0] >= begin)
    name = f"result-{workers - 1}"
    result_put = min((r for r in last if r[3] == "PUT" and blob(r, name)), key=lambda r: r[0])
    read = [r for r in last if r[3] == "GET" and rv + "result-" in r[5] and r[0] >= result_put[1]]
    results_read = max((r[1] for r in read), default=result_put[1])
    marker = min(r[0] for r in last if r[3] == "PUT" and blob(r, "committed"))
    writes = [r for r in last if rv not in r[5] and r[3] in {"PUT", "POST"} and r[1] <= marker]
    cas = max(r[1] for r in writes)
    bounds = {
        "setup": (begin, landed, first),
        "wait for setup": (landed, seen, last),
        "work": (seen, result_put[0], last),
        "publish": (result_put[0], result_put[1], last),
        "wait for results": (result_put[1], results_read, last),
        "commit": (results_read, cas, last),
    }
    phases = {}
    for phase, (a, b, reqs) in bounds.items():
        inside = _between(reqs, a - 1e-6, b + 1e-6)
        phases[phase] = {"seconds": b - a, "round_trips": rounds(inside), "requests": len(inside)}
    return {
        "phases": phases,
        "round_trips": sum(p["round_trips"] for p in phases.values()),
        "seconds": cas - begin,
        "worker0_first_request": begin,
    }
