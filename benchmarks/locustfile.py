"""Locust load test with Photofield's traffic: indexing workers posting one thumbnail per
request and searchers posting one text per request.

    locust -f benchmarks/locustfile.py --host http://localhost:8081 --headless -u 32 -r 8 -t 60s
"""

from __future__ import annotations

import io
import random

import numpy as np
from locust import HttpUser, between, task
from PIL import Image

QUERIES = [
    "beach sunset",
    "cat eyes",
    "a photo of a dog",
    "mountains in winter",
    "hawk",
    "birthday party",
    "city at night",
    "red car",
]


def _thumbnails(count: int = 16) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 255, (192, 256, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


THUMBNAILS = _thumbnails()


class IndexingUser(HttpUser):
    """A Photofield indexing worker: back-to-back single-image requests."""

    weight = 4
    wait_time = between(0, 0.01)

    @task
    def embed_image(self) -> None:
        data = random.choice(THUMBNAILS)
        with self.client.post(
            "/image-embeddings",
            files={"image": ("thumb.jpg", data, "image/jpeg")},
            name="/image-embeddings",
            catch_response=True,
        ) as response:
            if response.status_code != 200 or len(response.json()["images"]) != 1:
                response.failure(f"status {response.status_code}")


class SearchUser(HttpUser):
    """Someone typing searches while the library indexes."""

    weight = 1
    wait_time = between(0.5, 2)

    @task
    def embed_text(self) -> None:
        text = random.choice(QUERIES)
        with self.client.post(
            "/text-embeddings", json={"texts": [text]}, name="/text-embeddings", catch_response=True
        ) as response:
            if response.status_code != 200 or response.json()["texts"][0]["text"] != text:
                response.failure(f"status {response.status_code}")
