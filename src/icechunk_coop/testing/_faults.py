"""A fault-injecting reverse proxy for S3 on loopback: what a bad day at the object store does.

Run as its own process (``python -m icechunk_coop.testing._faults --port P --upstream
URL [--reset RATE] ...``; :func:`icechunk_coop.testing.fault_proxy` starts and
stops it) in front of a moto server. Both icechunk's Rust client and
s3fs/botocore reach it by ``AWS_ENDPOINT_URL``, path-style. Requests are
forwarded unchanged (the ``Host`` header included: the client signed it) over
one upstream connection per client connection. Standard library only.

For every request one seeded draw picks at most one of these faults, each at
its own rate (the rates of the first four add up to at most 1):

``reset``
    Read the request, then reset the connection (TCP RST) without
    forwarding it: a load balancer or NAT dropping the connection. The
    request never reaches storage, so a retry is always safe.
``slowdown``
    Answer ``503 Slow Down`` with S3's ``<Error><Code>SlowDown</Code>`` XML
    body, without forwarding: S3 throttling a prefix.
``error500``
    Answer ``500 InternalError`` (S3's XML body), without forwarding.
``lose_reply``
    For writes (PUT, POST, DELETE) only, a fraction of *writes*: forward the
    request so that it lands, then reset the connection instead of
    replying. The client cannot tell this from ``reset``; its retry meets its
    own write (a conditional PUT then answers 412). Other requests falling
    in this band are forwarded normally.

Independently, ``delay`` (a rate, with ``delay_ms``) holds a reply for
``delay_ms`` after the upstream answered (or the fault was chosen): a slow
store or a congested network. A forwarded write has landed by then, so a
client that times out first sees a lost reply.

Control endpoints (``_`` cannot start a bucket name, so they never shadow one):

- ``GET /_faults/counts``: ``{"requests": n, "forwarded": n, <kind>: n, ...}``
  since the start (diff two readings to measure one phase);
- ``GET /_faults/rates``; ``POST /_faults/rates`` with a JSON object of some of
  ``reset, slowdown, error500, lose_reply, delay, delay_ms`` sets them for
  every later request and answers the settings in force (400 with a message
  on a bad value). Three more keys aim the faults: ``seed`` restarts the
  random sequence; ``budget`` (an integer, or null for no limit) is how many
  more requests may be hit (with any fault, delays included) before the proxy
  turns harmless; ``match`` (a regular expression, or null) limits faults to
  requests whose path (without the query) it finds (``"/repo$"``: the
  object icechunk 2 updates to move a branch);
- ``GET /_faults/lost``: ``[[method, target, upstream status], ...]`` of the
  writes whose reply was dropped (the status says whether each one landed;
  the target is the request's path and query).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from icechunk_coop.testing._forwarding import ForwardingHandler, ForwardingServer

__all__ = ["CONTROL", "EXCLUSIVE", "KINDS", "Faults", "main", "validate_rates"]

CONTROL: Final = "/_faults/"
EXCLUSIVE: Final = ("reset", "slowdown", "error500", "lose_reply")
"""Faults of which one request gets at most one, in the order they are drawn."""
KINDS: Final = (*EXCLUSIVE, "delay")
"""Every kind of fault, as counted at ``/_faults/counts``."""
_WRITES: Final = frozenset({"PUT", "POST", "DELETE"})
_RATE_KEYS: Final = frozenset({*KINDS, "delay_ms"})


def validate_rates(rates: Mapping[str, Any]) -> dict[str, float]:
    """Rates as floats, or ValueError saying which one is wrong and why."""
    unknown = set(rates) - _RATE_KEYS
    if unknown:
        raise ValueError(
            f"unknown fault rate(s) {sorted(unknown)}; known: {', '.join(sorted(_RATE_KEYS))}"
        )
    out: dict[str, float] = {}
    for key, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number, got {value!r}")
        number = float(value)
        if key == "delay_ms":
            if not 0 <= number <= 600_000:
                raise ValueError(f"delay_ms must be within 0..600000, got {value!r}")
        elif not 0 <= number <= 1:
            raise ValueError(f"{key} must be a rate within 0..1, got {value!r}")
        out[key] = number
    return out


class Faults:
    """Current settings, the seeded random sequence and the counters; thread-safe."""

    def __init__(self, rates: Mapping[str, Any], seed: int | None) -> None:
        self._lock = threading.Lock()
        self._rates = dict.fromkeys(_RATE_KEYS, 0.0)
        self._budget: int | None = None
        self._match: re.Pattern[str] | None = None
        self._rng = random.Random(seed)
        self._counts: Counter[str] = Counter()
        self._lost: list[tuple[str, str, int]] = []
        self.update(rates)

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply some settings (see the module's doc); ValueError names a bad one."""
        changes = dict(changes)
        seed = changes.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        budget_given = "budget" in changes
        budget = changes.pop("budget", None)
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 0
        ):
            raise ValueError(f"budget must be an integer >= 0 or null, got {budget!r}")
        match_given = "match" in changes
        match = changes.pop("match", None)
        if match is not None and not isinstance(match, str):
            raise ValueError(f"match must be a regular expression or null, got {match!r}")
        try:
            pattern = None if match is None else re.compile(match)
        except re.error as exc:
            raise ValueError(f"match {match!r} is not a regular expression: {exc}") from exc
        given = validate_rates(changes)
        with self._lock:
            merged = {**self._rates, **given}
            total = sum(merged[k] for k in EXCLUSIVE)
            if total > 1 + 1e-9:
                raise ValueError(f"{' + '.join(EXCLUSIVE)} must add up to at most 1, got {total:g}")
            self._rates = merged
            if budget_given:
                self._budget = budget
            if match_given:
                self._match = pattern
            if seed is not None:
                self._rng = random.Random(seed)
            return self._settings()

    def _settings(self) -> dict[str, Any]:
        return {
            **self._rates,
            "budget": self._budget,
            "match": None if self._match is None else self._match.pattern,
        }

    def settings(self) -> dict[str, Any]:
        with self._lock:
            return self._settings()

    def draw(self, method: str, path: str) -> tuple[str | None, float]:
        """The fault for one request (None: forward it) and the delay in seconds."""
        with self._lock:
            self._counts["requests"] += 1
            if self._budget == 0 or (self._match is not None and not self._match.search(path)):
                return None, 0.0
            pick, slow = self._rng.random(), self._rng.random()
            rates = self._rates
            fault: str | None = None
            edge = 0.0
            for kind in EXCLUSIVE:
                edge += rates[kind]
                if pick < edge:
                    fault = kind
                    break
            if fault == "lose_reply" and method not in _WRITES:
                fault = None
            delay = 0.0
            if slow < rates["delay"] and rates["delay_ms"] > 0:
                delay = rates["delay_ms"] / 1000
                self._counts["delay"] += 1
            if fault is not None:
                self._counts[fault] += 1
            if (fault is not None or delay) and self._budget is not None:
                self._budget -= 1
            return fault, delay

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def lost(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._lost.append((method, path, status))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"requests": 0, "forwarded": 0, **dict.fromkeys(KINDS, 0), **self._counts}

    def lost_writes(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self._lost)


def _s3_error(code: str, message: str, resource: str) -> bytes:
    request_id = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{_xml_escape(resource)}</Resource>"
        f"<RequestId>{request_id}</RequestId><HostId>fault-proxy</HostId></Error>"
    ).encode()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ERRORS: Final = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "error500": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
}


class _Handler(ForwardingHandler):
    server: _FaultServer

    def _abort(self) -> None:
        """Reset the client's connection: RST, no reply, no orderly close."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self._reply(status, "OK" if status == 200 else "Bad Request", [], body)

    # ---- control ----------------------------------------------------------------------

    def _control(self, body: bytes) -> None:
        path = urllib.parse.urlsplit(self.path).path
        faults = self.server.faults
        if path == "/_faults/counts" and self.command == "GET":
            self._json(200, faults.counts())
        elif path == "/_faults/lost" and self.command == "GET":
            self._json(200, faults.lost_writes())
        elif path == "/_faults/rates" and self.command == "GET":
            self._json(200, faults.settings())
        elif path == "/_faults/rates" and self.command == "POST":
            try:
                given = json.loads(body or b"{}")
                if not isinstance(given, dict):
                    raise ValueError(f"expected a JSON object of rates, got {given!r}")
                self._json(200, faults.update(given))
            except ValueError as exc:  # json.JSONDecodeError is one
                self._json(400, {"error": str(exc)})
        else:
            self._json(400, {"error": f"unknown control request {self.command} {path}"})

    # ---- forwarding -------------------------------------------------------------------

    def _handle(self) -> None:
        body = self._read_body()
        if self.path.startswith(CONTROL):
            self._control(body)
            return
        faults = self.server.faults
        fault, delay = faults.draw(self.command, urllib.parse.urlsplit(self.path).path)
        if fault == "reset":
            time.sleep(delay)
            self._abort()
            return
        if fault in _ERRORS:
            status, reason, code, message = _ERRORS[fault]
            time.sleep(delay)
            error_headers = [("Content-Type", "application/xml")]
            if fault == "slowdown":
                error_headers.append(("Retry-After", "1"))
            resource = urllib.parse.urlsplit(self.path).path
            self._reply(status, reason, error_headers, _s3_error(code, message, resource))
            return
        forwarded = self._forward(body)
        if forwarded is None:
            self._reply(502, "Bad Gateway", [], b"upstream failed")
            return
        resp, data = forwarded
        faults.count("forwarded")
        time.sleep(delay)
        if fault == "lose_reply":
            faults.lost(self.command, self.path, resp.status)
            self._abort()
            return
        self._relay(resp, data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle  # noqa: N815


class _FaultServer(ForwardingServer):
    def __init__(self, address: tuple[str, int], upstream: str, faults: Faults) -> None:
        super().__init__(address, _Handler, upstream)
        self.faults = faults


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a rate must be within 0..1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m icechunk_coop.testing._faults", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5555")
    parser.add_argument("--reset", type=_rate, default=0.0, help="reset before forwarding")
    parser.add_argument("--slowdown", type=_rate, default=0.0, help="503 SlowDown")
    parser.add_argument("--error500", type=_rate, default=0.0, help="500 InternalError")
    parser.add_argument(
        "--lose-reply", type=_rate, default=0.0, help="of writes: land it, then reset"
    )
    parser.add_argument("--delay-rate", type=_rate, default=0.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        faults = Faults(
            {
                "reset": args.reset,
                "slowdown": args.slowdown,
                "error500": args.error500,
                "lose_reply": args.lose_reply,
                "delay": args.delay_rate,
                "delay_ms": args.delay_ms,
            },
            args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    server = _FaultServer((args.host, args.port), args.upstream, faults)
    print(
        f"fault proxy on {args.host}:{args.port} -> {args.upstream}: {faults.settings()}",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
