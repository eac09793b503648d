"""A storage-agnostic meeting point for the workers of one job.

Workers of an indexed job share nothing but object storage, so that is where
they meet: one publishes a blob, others wait for it. This module knows
nothing of Icechunk; it moves sealed frames (see ``_payload``) between
processes through any fsspec filesystem.

What is atomic where is ``_blobs``'s to say; this module adds sealing (see
``_payload``), waiting with deadlines and failure markers, and what a wait
costs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from icechunk_coop.errors import (
    ConfigurationError,
    WaitTimeoutError,
    WorkerFailedError,
)
from icechunk_coop.rendezvous._blobs import FETCH_CONCURRENCY, BlobStore, RequestCounter
from icechunk_coop.rendezvous._locations import check_name, normalise_url
from icechunk_coop.rendezvous._waiting import WaitPolicy, poll_until
from icechunk_coop.wire._markers import Failure
from icechunk_coop.wire._payload import Content, Sealer
from icechunk_coop.wire._records import failure_name, index_of_result

__all__ = ["Rendezvous", "RequestCounter", "WaitInterrupted"]

log = logging.getLogger(__name__)

#: Blobs read per batch while the previous batch is being opened (a few rounds of
#: FETCH_CONCURRENCY concurrent GETs each).
_FETCH_BATCH = 4 * FETCH_CONCURRENCY
#: How often a wait for one blob also asks for its failure marker (and ``unless``), seconds.
MARKERS_EVERY = 1.0


class WaitInterrupted(Exception):  # noqa: N818 - a signal between layers, not an error
    """A wait ended because the blob named ``name`` appeared (e.g. the job committed)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@attrs.frozen(kw_only=True)
class Rendezvous:
    """The meeting point of one job: a namespace ``<root>/<job_id>/``.

    Build it with :meth:`for_job`. Every blob is sealed with ``sealer``, so
    a blob from another job, another secret or a tampered one is refused
    before it is deserialised.
    """

    url: str
    sealer: Sealer
    policy: WaitPolicy = attrs.field(factory=WaitPolicy)
    storage_options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    requests: RequestCounter = attrs.field(factory=RequestCounter, eq=False, repr=False)
    _blobs: BlobStore = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        blobs = BlobStore(
            url=self.url, storage_options=self.storage_options, requests=self.requests
        )
        object.__setattr__(self, "_blobs", blobs)

    @classmethod
    def for_job(
        cls,
        root_url: str,
        *,
        job_id: str,
        sealer: Sealer,
        storage_options: Mapping[str, Any] | None = None,
        policy: WaitPolicy | None = None,
    ) -> Rendezvous:
        """The rendezvous of ``job_id`` under ``root_url``.

        ``job_id`` should include the orchestrator's uid when there is one
        (``WorkerIdentity.job_id`` does) so that a re-created job with the same
        name never reads an older run's blobs.
        """
        if job_id != sealer.job_id:
            raise ConfigurationError(
                f"the sealer is for job {sealer.job_id!r} but the rendezvous for {job_id!r}"
            )
        url = f"{normalise_url(root_url)}/{check_name(job_id)}"
        return cls(
            url=url,
            sealer=sealer,
            storage_options=dict(storage_options or {}),
            policy=policy or WaitPolicy(),
        )

    @property
    def blobs(self) -> BlobStore:
        """The raw bytes underneath, unsealed: for tools and tests that plant or inspect frames."""
        return self._blobs

    @property
    def job_id(self) -> str:
        return self.sealer.job_id

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    # ---- sealed objects ----------------------------------------------------

    def publish(self, name: str, obj: Any, *, content: Content = "json") -> None:
        """Store ``obj`` under ``name``, replacing whatever was there.

        Idempotent: a worker that runs again replaces its own blob whole.
        """
        self._blobs.put(name, self.sealer.seal(obj, name=name, content=content))
        log.debug("published %s", self.location(name))

    def publish_once(self, name: str, obj: Any, *, content: Content = "json") -> tuple[bool, Any]:
        """Store ``obj`` under ``name`` only if nothing is there yet.

        Returns ``(True, obj)`` if ours landed, else ``(False, existing)``
        with the blob that won, opened and verified.
        """
        data = self.sealer.seal(obj, name=name, content=content)
        if self._blobs.put_if_absent(name, data):
            return True, obj
        existing = self.read(name, content=content)
        if existing is None:  # removed between our attempt and the read: try again
            return self.publish_once(name, obj, content=content)
        return False, existing

    def read(self, name: str, *, content: Content = "json") -> Any | None:
        """The verified content of ``name``, or None when absent.

        ``content`` is what the caller expects; a blob holding anything else is
        refused (JSON by default: only sessions travel as pickles).
        """
        data = self._blobs.get(name)
        if data is None:
            return None
        return self.sealer.open(data, name=name, location=self.location(name), expect=content)

    def read_many(
        self, contents: Mapping[str, Content], *, probe: Iterable[str] = ()
    ) -> tuple[dict[str, Any], set[str]]:
        """The verified contents of those names that are present, read at once.

        ``contents`` maps each name to what it must hold; of the names in
        ``probe`` only whether they are there is told (nothing is opened).
        One round trip for all of them (the GETs run concurrently), instead
        of one each.
        """
        probed = [check_name(n) for n in probe]
        found = self._blobs.get_many([*(check_name(n) for n in contents), *probed])
        opened = {
            name: self.sealer.open(data, name=name, location=self.location(name), expect=content)
            for name, content in contents.items()
            if (data := found.get(name)) is not None
        }
        return opened, {n for n in probed if n in found}

    def remove(self, name: str) -> None:
        """Delete one blob (absent is fine)."""
        self._blobs.delete(name)

    def mark_failed(
        self,
        name: str,
        summary: str,
        *,
        attempt: int | None = None,
        restart: int | None = None,
        pod: str | None = None,
    ) -> None:
        """Tell waiters of ``name`` that it will not come: they stop at once.

        ``attempt``, ``restart`` and ``pod`` (where known) say which run of the
        worker failed; see :class:`~icechunk_coop.wire._markers.Failure`.
        """
        marker = Failure(
            name=name,
            summary=summary[:2000],
            at=time.time(),
            worker=index_of_result(name),
            attempt=attempt,
            restart=restart,
            pod=pod,
        )
        self.publish(failure_name(name), marker.to_wire())

    def clear_failure(self, name: str) -> None:
        """Remove the failure marker of ``name`` (a retry is under way)."""
        self._blobs.delete(failure_name(name))

    def remove_all(self, *, keep: Iterable[str] = ()) -> None:
        """Delete this job's whole namespace, except the blobs named in ``keep``."""
        self._blobs.remove_all(keep=keep)

    def connect(self) -> None:
        """Build the storage client and send it a first request, ahead of the job's reads.

        Best effort: a failure is reported by :meth:`check_reachable`, not here.
        """
        self._blobs.connect()

    def check_reachable(self) -> None:
        """Refuse at once a meeting point whose bucket does not exist or cannot be reached.

        Without this, a typo in the bucket name surfaces as a raw
        ``FileNotFoundError`` in worker 0 while every other worker waits out
        its deadline for a setup that can never be written.
        """
        self._blobs.check_reachable()

    def arrived(self) -> set[str]:
        """Names of the blobs present now (failure markers included), from one listing."""
        return self._blobs.names()

    # ---- waiting -------------------------------------------------------------

    def failures(self, names: Iterable[str]) -> dict[str, str]:
        """The summaries of the failure markers of ``names`` that are present.

        A marker that cannot be opened (another secret, tampered) is refused
        like any blob: fail closed, naming it.
        """
        found: dict[str, str] = {}
        for name in names:
            wire = self.read(failure_name(name))
            if wire is not None:
                marker = Failure.from_wire(wire, self.location(failure_name(name)))
                found[name] = marker.summary
        return found

    def _interrupt(self, unless: str | None, present: Iterable[str] | None = None) -> None:
        if unless is None:
            return
        seen = unless in present if present is not None else self._blobs.get(unless) is not None
        if seen:
            raise WaitInterrupted(unless)

    def wait_for(
        self,
        name: str,
        *,
        content: Content = "json",
        policy: WaitPolicy | None = None,
        unless: str | None = None,
        just_read: bool = False,
    ) -> Any:
        """Wait until ``name`` is published and return its verified content.

        A poll is one GET of the blob; at most every :data:`MARKERS_EVERY`
        seconds it also asks for the blob's failure marker and, with
        ``unless``, that blob (if it appears, the wait ends with
        :class:`WaitInterrupted`: a job that committed ends every wait of its
        workers), in the same round trip. The first polls come tens of
        milliseconds apart, for the blob every waiting worker needs; asking
        for the markers at that pace too would triple their requests, and a
        failure or a commit is noticed within a second all the same.
        ``just_read``: the caller has just read ``name`` and ``unless`` and
        found neither (a worker's start reads the setup and ``committed``):
        the first poll comes after the policy's first pause and the markers
        are first asked a second later, so a setup that lands within the
        second costs each waiting worker its GETs of the setup alone (at
        N = 64 the markers' GETs were a quarter of a job's requests).
        """
        check_name(name)
        probes = [failure_name(name), *([unless] if unless else [])]
        # When the markers were last asked (monotonic); a caller that just read counts.
        asked = time.monotonic() if just_read else -math.inf

        def probe() -> tuple[Any] | None:
            nonlocal asked
            now = time.monotonic()
            due = now - asked >= MARKERS_EVERY
            if due:
                asked = now
            opened, present = self.read_many({name: content}, probe=probes if due else ())
            if name in opened:
                return (opened[name],)
            if failure_name(name) in present:
                raise WorkerFailedError(
                    location=self.url, failures=self.failures([name]), job=self.job_id
                )
            self._interrupt(unless, present)
            return None

        def timeout(waited: float) -> Exception:
            return WaitTimeoutError(
                location=self.url,
                missing=[name],
                expected=1,
                waited_seconds=waited,
                job=self.job_id,
            )

        log.info("waiting for %s", self.location(name))
        return poll_until(probe, policy or self.policy, timeout, pause_first=just_read)[0]

    def _fetched(self, names: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """The blobs of ``names`` that exist, fetched a batch ahead of the caller.

        While the caller opens (and merges) one batch, the next is already
        being read: collecting N blobs then costs about the longer of reading
        and opening them, not both one after the other, and holds at most two
        batches of raw bytes at a time.
        """
        batches = [names[i : i + _FETCH_BATCH] for i in range(0, len(names), _FETCH_BATCH)]
        if len(batches) <= 1:
            yield from (self._blobs.get_many(batches[0]) if batches else {}).items()
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="icechunk-coop-fetch") as pool:
            ahead = pool.submit(self._blobs.get_many, batches[0])
            for following in [*batches[1:], None]:
                found = ahead.result()
                if following is not None:
                    ahead = pool.submit(self._blobs.get_many, following)
                yield from found.items()

    def wait_for_all(
        self,
        names: Sequence[str],
        *,
        content: Content = "json",
        policy: WaitPolicy | None = None,
        unless: str | None = None,
        on_arrival: Callable[[str, Any], None] | None = None,
    ) -> dict[str, Any]:
        """Wait until every name is published; return their contents by name.

        One LIST per poll covers all of them, their failure markers and
        ``unless``, so the cost of a poll grows only with the listing's pages
        (a thousand names each); each blob is then read once, the new ones of
        a poll concurrently. ``on_arrival(name, content)`` is called for each
        blob as soon as it is read, while the wait goes on, so a caller can
        fold blobs in as they come instead of all at once at the end; what it
        raises ends the wait.
        """
        wanted = [check_name(n) for n in names]
        got: dict[str, Any] = {}
        last_report = [time.monotonic()]

        def probe() -> dict[str, Any] | None:
            present = self.arrived()
            failed = [n for n in wanted if n not in present and failure_name(n) in present]
            if failed:
                raise WorkerFailedError(
                    location=self.url, failures=self.failures(failed), job=self.job_id
                )
            self._interrupt(unless, present)
            new = [n for n in wanted if n in present and n not in got]
            for name, data in self._fetched(new):
                got[name] = self.sealer.open(
                    data, name=name, location=self.location(name), expect=content
                )
                if on_arrival is not None:
                    on_arrival(name, got[name])
            if len(got) == len(wanted):
                return {n: got[n] for n in wanted}
            if time.monotonic() - last_report[0] > 30:
                last_report[0] = time.monotonic()
                log.info(
                    "%d of %d arrived at %s; still waiting for %s",
                    len(got),
                    len(wanted),
                    self.url,
                    ", ".join(n for n in wanted if n not in got)[:500],
                )
            return None

        def timeout(waited: float) -> Exception:
            return WaitTimeoutError(
                location=self.url,
                missing=[n for n in wanted if n not in got],
                expected=len(wanted),
                waited_seconds=waited,
                job=self.job_id,
            )

        log.info("waiting for %d blobs at %s", len(wanted), self.url)
        return poll_until(probe, policy or self.policy, timeout)
