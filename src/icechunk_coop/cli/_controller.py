"""A small Job controller for local processes, shaped like Kubernetes' Indexed Job.

Each index runs as its own process group (so a worker's children go with
it, and Ctrl-C in the terminal reaches only the controller, which stops
the workers in order). A failed index is restarted up to
``backoff_limit_per_index`` times (``backoffLimitPerIndex``); exit code 2
fails it at once (the manifests' ``podFailurePolicy``); an index that failed
for good stops every other worker rather than leave them waiting out their
deadline. ``timeout`` is the job's deadline (``activeDeadlineSeconds``).
Stopping is SIGTERM to each worker's group, then SIGKILL after
``grace_period`` (``terminationGracePeriodSeconds``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Literal

from icechunk_coop import ConfigurationError
from icechunk_coop.cli._view import ProcessView
from icechunk_coop.cli._words import describe_exit, workers

__all__ = ["EXIT_NOT_RETRYABLE", "JobResult", "LocalJob", "Outcome"]

EXIT_NOT_RETRYABLE = 2
POLL_SECONDS = 0.05
RESTART_DELAY = 1.0  # doubled per retry of an index, like the Job controller's backoff
Outcome = Literal["succeeded", "failed", "deadline", "interrupted"]
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(kw_only=True)
class JobResult:
    """How a local job ended.

    ``codes``: each index's last exit code (negative: the signal that ended
    it); ``attempts``: how often each index was started; ``failed``: the
    indexes that failed for good; ``stopped``: those still running when
    the job was stopped; ``pending``: those waiting for a restart then.
    """

    job_id: str
    outcome: Outcome
    codes: dict[int, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    signal: int | None = None

    @property
    def exit_code(self) -> int:
        """0 done, 1 retryable failure, 2 not retryable, 128 + N stopped by signal N."""
        if self.outcome == "succeeded":
            return 0
        if self.outcome == "interrupted":
            return 128 + (self.signal or signal.SIGINT)
        if any(self.codes.get(i) == EXIT_NOT_RETRYABLE for i in self.failed):
            return EXIT_NOT_RETRYABLE
        return 1


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _ended(proc: subprocess.Popen[str]) -> int | None:
    """The exit code if ``proc`` ended, after killing what it left in its process group.

    The leader is looked at without being reaped, so its group id cannot be
    reused by another process before the stragglers are killed.
    """
    if not hasattr(os, "waitid"):  # macOS before Python 3.13: reap first, then the group
        code = proc.poll()
        if code is not None:
            _kill_group(proc.pid, signal.SIGKILL)
        return code
    try:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return None
    except ChildProcessError:  # reaped already
        return proc.poll()
    _kill_group(proc.pid, signal.SIGKILL)
    return proc.wait()


class LocalJob:
    """Run ``command`` as ``total`` indexed workers; ``run`` returns how the job ended."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        job_id: str,
        total: int,
        env: Mapping[str, str],
        backoff_limit_per_index: int,
        timeout: float | None,
        grace_period: float,
        out: IO[str],
        err: IO[str],
        quiet: bool = False,
        on_tick: Callable[[], None] | None = None,
        on_line: Callable[[int, str], None] | None = None,
    ) -> None:
        self.command, self.job_id, self.total = list(command), job_id, total
        self.on_tick, self.on_line = on_tick, on_line
        self.env, self.limit = dict(env), backoff_limit_per_index
        self.timeout, self.grace = timeout, grace_period
        self.out, self.err, self.quiet = out, err, quiet
        self._lock = threading.Lock()
        self._pumps: list[threading.Thread] = []
        self._running: dict[int, subprocess.Popen[str]] = {}
        self._due: dict[int, float] = {}
        self._done: set[int] = set()
        self._signal: int | None = None
        self._hurry = False
        self._stopping = False
        self.result = JobResult(job_id=job_id, outcome="failed")

    # ---- messages and output ----------------------------------------------------------

    def say(self, text: str, *, info: bool = False) -> None:
        if info and self.quiet:
            return
        with self._lock:
            self.err.write(f"icechunk-coop: {text}\n")
            self.err.flush()

    def _pump(self, index: int, stream: IO[str]) -> None:
        with stream:  # closed here, at its end: the worker's pipe is ours alone
            for line in stream:
                text = line.rstrip("\n")
                if self.on_line is not None:
                    self.on_line(index, text)
                with self._lock, contextlib.suppress(OSError, ValueError):  # stdout closed
                    self.out.write(f"[{index}] {text}\n")
                    self.out.flush()

    def processes(self) -> dict[int, ProcessView]:
        """Each index's process now (call from the thread that runs the job)."""
        found: dict[int, ProcessView] = {}
        failed = set(self.result.failed)
        for index in range(self.total):
            attempt, code = self.result.attempts.get(index, 0), self.result.codes.get(index)
            proc = self._running.get(index)
            if proc is not None:
                view = ProcessView(state="running", attempt=attempt, pid=proc.pid)
            elif index in self._done:
                view = ProcessView(state="succeeded", attempt=attempt, code=code)
            elif index in failed:
                view = ProcessView(state="failed", attempt=attempt, code=code)
            elif index in self._due:
                view = ProcessView(state="restarting", attempt=attempt, code=code)
            elif index in self.result.stopped:
                view = ProcessView(state="stopped", attempt=attempt, code=code)
            else:
                view = ProcessView(state="starting", attempt=attempt)
            found[index] = view
        return found

    # ---- starting, ending, stopping ----------------------------------------------------

    def _start(self, index: int) -> None:
        env = {**self.env, "JOB_COMPLETION_INDEX": str(index)}
        try:
            proc = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                process_group=0,  # its own group: its children go with it
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot start worker {index}: {self.command[0]!r}: {exc.strerror or exc}"
            ) from exc
        attempt = self.result.attempts[index] = self.result.attempts.get(index, 0) + 1
        self._running[index] = proc
        assert proc.stdout is not None
        pump = threading.Thread(target=self._pump, args=(index, proc.stdout), daemon=True)
        pump.start()
        self._pumps.append(pump)
        again = f" (attempt {attempt} of {self.limit + 1})" if attempt > 1 else ""
        self.say(f"worker {index} started, pid {proc.pid}{again}", info=True)

    def _on_exit(self, index: int, code: int, now: float) -> None:
        self.result.codes[index] = code
        retries = self.result.attempts[index] - 1
        if code == 0:
            self._done.add(index)
            if retries:
                self.say(f"worker {index} succeeded (attempt {retries + 1})", info=True)
        elif code == EXIT_NOT_RETRYABLE:
            self.result.failed.append(index)
            self.say(f"worker {index} exited with 2 (not retryable): index {index} failed")
        elif retries < self.limit:
            delay = RESTART_DELAY * 2**retries
            self._due[index] = now + delay
            self.say(
                f"worker {index} {describe_exit(code)}; restarting it in {delay:g}s "
                f"(retry {retries + 1} of {self.limit})"
            )
        else:
            self.result.failed.append(index)
            left = f"after {retries + 1} attempts" if retries else "no retries"
            self.say(
                f"worker {index} {describe_exit(code)}; index {index} failed ({left}, "
                f"--backoff-limit-per-index {self.limit})"
            )

    def _reap(self) -> None:
        now = time.monotonic()
        for index, proc in list(self._running.items()):
            code = _ended(proc)
            if code is not None:
                del self._running[index]
                self._on_exit(index, code, now)

    def _stop_all(self) -> None:
        """SIGTERM every running worker's group, SIGKILL after the grace period."""
        self._stopping = True
        self.result.pending = sorted(self._due)
        self._due.clear()
        if not self._running:
            return
        self.result.stopped = sorted(self._running)
        if self._signal is None:  # interrupted: the caller's one line says it all
            self.say(f"stopping {workers(self._running)}", info=True)
        for proc in self._running.values():
            _kill_group(proc.pid, signal.SIGTERM)
        end = time.monotonic() + self.grace
        while self._running and time.monotonic() < end and not self._hurry:
            for index, proc in list(self._running.items()):
                code = _ended(proc)
                if code is not None:
                    self.result.codes[index] = code
                    del self._running[index]
            time.sleep(POLL_SECONDS)
        if self._running:
            self.say(f"killing {workers(self._running)} (still running after SIGTERM)")
        for index, proc in self._running.items():
            _kill_group(proc.pid, signal.SIGKILL)
            self.result.codes[index] = proc.wait()
        self._running.clear()

    # ---- the loop ------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signal is not None or self._stopping:
            self._hurry = True  # a second Ctrl-C, or one while stopping: kill now
        self._signal = self._signal or signum

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> Outcome:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if self._signal is not None:
                return "interrupted"
            self._reap()
            if self.result.failed:
                return "failed"
            if len(self._done) == self.total:
                return "succeeded"
            if self.on_tick is not None:
                self.on_tick()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "deadline"
            for index, due in list(self._due.items()):
                if due <= now:
                    del self._due[index]
                    self._start(index)
            time.sleep(POLL_SECONDS)

    def run(self) -> JobResult:
        with self._signals():
            try:
                for index in range(self.total):
                    self._start(index)
                    if self._signal is not None:
                        break
                self.result.outcome = self._loop()
            finally:
                self._stop_all()
        self.result.signal = self._signal
        for pump in self._pumps:
            pump.join(5)
        return self.result
