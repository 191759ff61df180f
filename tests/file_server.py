"""A static HTTP file server on 127.0.0.1 for the download tests (no other network).

Serves ``files`` (URL path -> bytes), answers ``Range: bytes=N-`` with 206 and records
every request as ``(method, path, range header)``. A plain module, like
``slurm_cluster.py``: pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

__all__ = ["serve_files"]


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[tuple[str, str, str | None]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        rng = self.headers.get("Range")
        self.server.requests.append(("GET", self.path, rng))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(m.group(1)) if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng)) else 0
        if start >= len(body) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def serve_files(files: dict[str, bytes]) -> Iterator[_Server]:
    """A running server for ``files``; its ``server_port`` and ``requests`` are attributes."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.files, server.requests = files, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
