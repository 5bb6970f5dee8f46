"""Reading a running server from outside, as the tests and benchmarks do: a metric from its
scrape, its memory, a client that sends a request and leaves, one that holds a request open.
Kept apart from the test modules so that importing these never builds a test corpus."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def metric(url: str, name: str, **labels: str) -> float:
    return parse_metric(httpx.get(url + "/metrics").text, name, **labels)


def parse_metric(text: str, name: str, **labels: str) -> float:
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    selector = f"{{{re.escape(label)}}}" if labels else ""
    m = re.search(rf"^{name}{selector} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def image_post_then_leave(url: str, image: bytes) -> Iterator[None]:
    """POST `image` to /image-embeddings on a raw socket, which is closed — the client leaving
    without reading its answer — when the block ends."""
    request = httpx.Request(
        "POST", url + "/image-embeddings", files={"image": ("b.jpg", image, "image/jpeg")}
    )
    body = request.read()
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            f"POST /image-embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"{request.headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        yield


@contextlib.contextmanager
def request_in_flight(url: str) -> Iterator[None]:
    """A request the server is serving until the block ends: its headers and half its body
    sent, the rest never (the connection closes at the end)."""
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            b"POST /text-embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 40\r\n\r\n{"texts": ['
        )
        time.sleep(0.3)  # parsed, and the app called
        yield
