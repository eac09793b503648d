"""Where a job's time went: every worker's steps on one clock, and what its end waited for.

The steps come from ``Committed.timeline`` (a committed job keeps every
worker's) or from the results of a job still running. They are wall-clock
spans of different machines, so offsets between workers are only as good
as their clocks; durations within one worker are exact.

The job's DAG fixes the critical path, so it is read off rather than
searched for: the last worker's ``commit`` waited for the last result, whose
``work`` began once worker 0's ``setup`` was published. Nothing here
imports a plotting or terminal library: workers import this package.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from icechunk_coop.errors import ConfigurationError

__all__ = ["STEPS", "CriticalPath", "Span", "Timeline"]

#: The steps a worker records, in the order they happen.
STEPS = ("setup", "work", "wait", "commit")


@attrs.frozen(kw_only=True)
class Span:
    """One step of one worker, in Unix seconds."""

    worker: int
    step: str
    began: float
    ended: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended - self.began)


@attrs.frozen(kw_only=True)
class CriticalPath:
    """The spans the job's end waited for, and how the job's time splits.

    ``overhead`` is the job's time minus the slowest worker's own ``work``:
    what coordination, waiting for the setup, publishing and committing
    added on top of the work no amount of parallelism removes.
    """

    spans: tuple[Span, ...]
    job_seconds: float
    slowest_worker: int | None
    slowest_work: float

    @property
    def overhead(self) -> float:
        return max(0.0, self.job_seconds - self.slowest_work)


def _order(span: Span) -> tuple[int, int, float]:
    rank = STEPS.index(span.step) if span.step in STEPS else len(STEPS)
    return (span.worker, rank, span.began)


def _sorted(spans: Iterable[Span]) -> tuple[Span, ...]:
    return tuple(sorted(spans, key=_order))


@attrs.frozen(kw_only=True)
class Timeline:
    """Every recorded step of one job; ``workers_total`` counts the rows to draw."""

    job_id: str
    spans: tuple[Span, ...] = attrs.field(converter=_sorted)
    workers_total: int

    @classmethod
    def from_steps(
        cls,
        job_id: str,
        steps: Mapping[int, Mapping[str, tuple[float, float]]],
        *,
        workers_total: int | None = None,
    ) -> Timeline:
        """From worker index -> step -> (began, ended), as the records keep them."""
        spans = [
            Span(worker=index, step=step, began=began, ended=ended)
            for index, named in steps.items()
            for step, (began, ended) in named.items()
        ]
        if not spans:
            raise ConfigurationError(f"job {job_id}: no worker recorded a step")
        seen = max(s.worker for s in spans) + 1
        return cls(job_id=job_id, spans=spans, workers_total=max(workers_total or 0, seen))

    @property
    def start(self) -> float:
        return min(s.began for s in self.spans)

    @property
    def end(self) -> float:
        return max(s.ended for s in self.spans)

    def of(self, worker: int, step: str) -> Span | None:
        return next((s for s in self.spans if s.worker == worker and s.step == step), None)

    def missing(self) -> list[int]:
        """Worker indexes with no recorded step (still running, or results not read)."""
        seen = {s.worker for s in self.spans}
        return [i for i in range(self.workers_total) if i not in seen]

    def critical_path(self) -> CriticalPath:
        """Worker 0's setup, the last result's work, the step that ended the job."""
        last = max(self.spans, key=lambda s: (s.ended, s.worker))
        works = [s for s in self.spans if s.step == "work"]
        chain: list[Span] = []
        if works:
            latest = max(works, key=lambda s: (s.ended, s.worker))
            setup = self.of(0, "setup")
            if setup is not None and setup.ended <= latest.began + 1e-3:
                chain.append(setup)
            elif (own := self.of(latest.worker, "setup")) is not None:
                chain.append(own)  # the setup this worker ran or waited for itself
            chain.append(latest)
        if last not in chain:
            chain.append(last)
        slowest = max(works, key=lambda s: (s.seconds, -s.worker), default=None)
        return CriticalPath(
            spans=tuple(chain),
            job_seconds=self.end - self.start,
            slowest_worker=None if slowest is None else slowest.worker,
            slowest_work=0.0 if slowest is None else slowest.seconds,
        )
