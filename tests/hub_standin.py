"""A local stand-in for the model hosts (plain HTTP and the Hugging Face hub's resolve API).

The real hosts are unreachable from the machines this project is built on; this serves the same
protocol on a loopback port so that the real download code (urllib, huggingface_hub) runs
against it unchanged. It is a stand-in for the network, not a mock of our code.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandIn:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # path -> content
        self.short: set[str] = set()  # paths that promise more bytes than they send
        self.requests: Counter[str] = Counter()
        self.url = ""


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _respond(self, with_body: bool) -> None:
            path = self.path.split("?")[0]
            state.requests[f"{self.command} {path}"] += 1
            # hf: /{owner}/{repo}/resolve/{revision}/{filename}
            parts = path.strip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                path = "/hf/" + "/".join(parts[:2]) + "/" + "/".join(parts[4:])
            data = state.files.get(path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            etag = hashlib.sha256(data).hexdigest()
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if with_body:
                self.wfile.write(data[: len(data) // 2] if path in state.short else data)

        def do_GET(self) -> None:
            self._respond(True)

        def do_HEAD(self) -> None:
            self._respond(False)

    return Handler


@contextmanager
def serve_stand_in() -> Iterator[StandIn]:
    state = StandIn()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
