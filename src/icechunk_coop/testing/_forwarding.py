"""A reverse proxy's plumbing: read a request, send it upstream, relay the answer.

Two proxies stand between clients and a local S3 server: the fault injector
(``icechunk_coop.testing._faults``) and the benchmarks' request counter
(``benchmarks/_proxy.py``). Both must pass every request through unchanged
(icechunk's Rust client and botocore alike), keep one upstream connection
per client connection, and cope with chunked uploads; only what they do
around the forwarding differs. Standard library only: each runs as a
process of its own.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["HOP_BY_HOP", "ForwardingHandler", "ForwardingServer"]

#: Headers that belong to one connection, never forwarded.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade"}
)  # fmt: skip


class ForwardingServer(ThreadingHTTPServer):
    """A threaded server that knows its upstream ``http://host:port``."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], upstream: str
    ) -> None:
        super().__init__(address, handler)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up on us (or a socket we reset ourselves) is routine here.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class ForwardingHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive on both sides; subclasses decide what happens around a forward."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ForwardingServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would cost more than the forwarding

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            conn = http.client.HTTPConnection(
                self.server.upstream_host, self.server.upstream_port, timeout=120
            )
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._upstream = conn
        return self._upstream

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes] | None:
        """Send the request upstream; its response and body, or None if upstream failed."""
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        if body or self.command in {"PUT", "POST"}:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(message_body=body or None)
                resp = conn.getresponse()
                return resp, resp.read()
            except (http.client.HTTPException, OSError):
                # A kept-alive upstream connection closed under us: reconnect once.
                conn.close()
                self._upstream = None
                if attempt == 2:
                    return None
        return None  # pragma: no cover - the loop returns

    def _relay(self, resp: http.client.HTTPResponse, data: bytes) -> None:
        """Answer the client with upstream's response, minus this hop's headers."""
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            lk = k.lower()
            if lk in HOP_BY_HOP or lk in {"content-length", "date", "server"}:
                continue
            self.send_header(k, v)
        if self.command == "HEAD":
            length = resp.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)
