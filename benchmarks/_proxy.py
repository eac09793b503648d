"""A counting reverse proxy for S3 on loopback: what the benchmark bills.

Run as its own process (``python benchmarks/_proxy.py --port P --upstream URL``)
so that counting never competes with the clients for a GIL. Every request is
forwarded unchanged (the ``Host`` header included, which the client signed)
and recorded as ``(time, bucket, kind, status)``. Clients must use path-style
addressing (s3fs and botocore do with a custom endpoint; icechunk_coop's
``icechunk_storage`` forces it), so the bucket is the first path segment.

Kinds follow how S3 prices requests:

- ``LIST``: ListObjects(V2), ListBuckets, ListMultipartUploads ($0.005 / 1k)
- ``PUT``, ``POST``, ``COPY``: writes ($0.005 / 1k)
- ``GET``, ``HEAD``, ``OTHER`` (e.g. GetBucketLocation) ($0.0004 / 1k)
- ``DELETE`` (free)

Control endpoints (``_bench`` can never be a bucket name: ``_`` is not allowed):
``GET /_bench/counts`` -> ``{bucket: {kind: n}}``;
``GET /_bench/events?bucket=B`` -> ``[[unix_time, kind, status], ...]``;
``GET /_bench/log?bucket=B`` -> ``[[start, end, caller, method, kind, path, status], ...]``.

Who sent a request (``caller``) is the access key id of its signature
(``Authorization: AWS4-HMAC-SHA256 Credential=<key>/...``): moto accepts any
key, so a benchmark gives each worker a key of its own (``w0``, ``w1``, ...)
and every request of that worker, s3fs's and icechunk's alike, carries its
name, with nothing in the library changed. ``start`` is when the request
arrived, ``end`` when its answer was sent, both before and after the added
latency: the spans the critical-path analysis chains (``critical.py``).

``--latency-ms`` delays every forwarded request, to look more like a real
object store (S3 answers small requests in roughly 10-30 ms; moto in < 2 ms).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from email.message import Message

from icechunk_coop.testing._forwarding import ForwardingHandler, ForwardingServer

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_LIST_QUERY = frozenset({"list-type", "prefix", "delimiter", "marker", "continuation-token"})


def classify(method: str, target: str, headers: Message) -> tuple[str, str]:
    """``(bucket, kind)`` of one path-style S3 request."""
    parsed = urllib.parse.urlsplit(target)
    path = parsed.path.lstrip("/")
    bucket, _, key = path.partition("/")
    query = set(urllib.parse.parse_qs(parsed.query, keep_blank_values=True))
    method = method.upper()
    if method == "DELETE":
        return bucket, "DELETE"
    if method == "HEAD":
        return bucket, "HEAD"
    if not key:  # the service (ListBuckets) or a bucket-level call
        if method == "GET":
            if not bucket or "uploads" in query or "versions" in query:
                return bucket, "LIST"
            if not query or query & _LIST_QUERY:
                return bucket, "LIST"
            return bucket, "OTHER"  # GetBucketLocation, GetBucketVersioning, ...
        if method == "POST" and "delete" in query:
            return bucket, "DELETE"  # DeleteObjects
        return bucket, "PUT" if method == "PUT" else "POST"
    if method == "GET":
        return bucket, "GET"
    if method == "PUT":
        return bucket, "COPY" if headers.get("x-amz-copy-source") else "PUT"
    if method == "POST":
        return bucket, "POST"
    return bucket, "OTHER"


#: (start, end, caller, method, kind, path, status) of one forwarded request.
Request = tuple[float, float, str, str, str, str, int]


def caller_of(headers: Message) -> str:
    """The access key id that signed a request ("" when unsigned)."""
    match = _CREDENTIAL.search(headers.get("Authorization", ""))
    return match.group(1) if match else ""


class Ledger:
    """Every request seen, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._events: defaultdict[str, list[tuple[float, str, int]]] = defaultdict(list)
        self._log: defaultdict[str, list[Request]] = defaultdict(list)

    def add(self, bucket: str, kind: str, status: int) -> None:
        now = time.time()
        with self._lock:
            self._counts[bucket][kind] += 1
            self._events[bucket].append((now, kind, status))

    def record(self, bucket: str, request: Request) -> None:
        with self._lock:
            self._log[bucket].append(request)

    def log(self, bucket: str) -> list[Request]:
        with self._lock:
            return list(self._log.get(bucket, []))

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {b: dict(c) for b, c in self._counts.items()}

    def events(self, bucket: str) -> list[tuple[float, str, int]]:
        with self._lock:
            return list(self._events.get(bucket, []))


class _Handler(ForwardingHandler):
    server: _ProxyServer

    def _control(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        payload: object
        if parsed.path == "/_bench/counts":
            payload = self.server.ledger.counts()
        elif parsed.path == "/_bench/events":
            payload = self.server.ledger.events(query.get("bucket", [""])[0])
        elif parsed.path == "/_bench/log":
            payload = self.server.ledger.log(query.get("bucket", [""])[0])
        else:
            payload = {"error": f"unknown control path {parsed.path}"}
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        if self.path.startswith("/_bench/"):
            self._control()
            return
        started = time.time()
        body = self._read_body()
        if self.server.latency:
            time.sleep(self.server.latency)
        bucket, kind = classify(self.command, self.path, self.headers)
        forwarded = self._forward(body)
        if forwarded is None:
            self.send_error(502, "upstream failed")
            return
        resp, data = forwarded
        self.server.ledger.add(bucket, kind, resp.status)
        self._relay(resp, data)
        path = urllib.parse.urlsplit(self.path).path
        request = (started, time.time(), caller_of(self.headers), self.command, kind, path,
                   resp.status)  # fmt: skip
        self.server.ledger.record(bucket, request)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle  # noqa: N815


class _ProxyServer(ForwardingServer):
    def __init__(self, address: tuple[str, int], upstream: str, latency: float = 0.0) -> None:
        super().__init__(address, _Handler, upstream)
        self.latency = latency
        self.ledger = Ledger()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5555")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    server = _ProxyServer((args.host, args.port), args.upstream, args.latency_ms / 1000)
    print(f"counting proxy on {args.host}:{args.port} -> {args.upstream}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
