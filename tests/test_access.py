"""PHOTOFIELD_AI_API_KEY on a real server: Bearer, Basic (as Photofield's Go client sends it
from `http://user:<key>@host`), the open probes, /metrics, and a key that never reaches a log."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from photofield_ai.api.auth import presented_key
from photofield_ai.config import Settings
from tests.conftest import ServerProcess, start_server
from tests.images import jpeg

KEY = "k3y-with:colon-and-symbols!~"


@pytest.fixture(scope="module")
def locked(
    tmp_path_factory: pytest.TempPathFactory, tiny_float32: tuple[Path, Path]
) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("access"), *tiny_float32, PHOTOFIELD_AI_API_KEY=KEY)
    yield srv
    srv.stop()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


PROTECTED = [
    ("POST", "/text-embeddings"),
    ("POST", "/image-embeddings"),
    ("HEAD", "/image-embeddings"),
    ("HEAD", "/text-embeddings"),
    ("POST", "/faces"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {KEY}x"},
        basic("photofield", "wrong"),
        basic(KEY, ""),  # the key as the user name is not the password
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": f"Token {KEY}"},
    ],
    ids=["none", "wrong-bearer", "longer", "wrong-basic", "key-as-user", "bad-basic", "scheme"],
)
def test_every_endpoint_but_the_probes_needs_the_key(
    locked: ServerProcess, method: str, path: str, headers: dict[str, str]
) -> None:
    r = httpx.request(method, locked.url + path, headers=headers)
    assert r.status_code == 401
    challenges = r.headers.get_list("www-authenticate")
    assert any(c.startswith("Bearer") for c in challenges)
    assert any(c.startswith("Basic") for c in challenges)
    if method != "HEAD":
        error = r.json()["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert ("wrong" in message) == bool(headers), message


def test_bearer_and_basic_with_any_user_get_in(locked: ServerProcess) -> None:
    for headers in ({"Authorization": f"Bearer {KEY}"}, basic("photofield", KEY), basic("", KEY)):
        r = httpx.post(locked.url + "/text-embeddings", json={"texts": ["x"]}, headers=headers)
        assert r.status_code == 200, (headers, r.text)


def test_a_go_style_url_with_user_info_gets_in(locked: ServerProcess) -> None:
    """Photofield builds its request URLs from `ai.host`, and Go's http.Client turns a URL's user
    info into Basic auth (net/http client.go); httpx does the same, so this is that request."""
    host = locked.url.removeprefix("http://")
    password = KEY.replace(":", "%3A").replace("!", "%21")
    url = f"http://photofield:{password}@{host}/image-embeddings"
    r = httpx.post(url, files={"image": ("image", jpeg(128, 96))})
    assert r.status_code == 200, r.text
    assert r.request.headers["authorization"].startswith("Basic ")


def test_probes_stay_open(locked: ServerProcess) -> None:
    assert httpx.get(locked.url + "/health").status_code == 200
    assert httpx.get(locked.url + "/ready").status_code == 200


def test_the_key_never_reaches_the_log(locked: ServerProcess) -> None:
    httpx.post(locked.url + "/text-embeddings", json={"texts": ["x"]}, headers=basic("u", KEY))
    httpx.post(locked.url + "/text-embeddings", json={"texts": ["x"]}, headers=basic("u", "no"))
    httpx.post(
        locked.url + "/v1/embeddings", content=b"{", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert KEY not in locked.log()
    assert KEY not in repr(Settings(api_key=KEY))


def test_metrics_count_refusals(locked: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}

    def refused() -> float:
        text = httpx.get(locked.url + "/metrics", headers=auth).text
        line = next(
            x for x in text.splitlines() if x.startswith("photofield_ai_http_unauthorized_total")
        )
        return float(line.split()[-1])

    before = refused()
    httpx.get(locked.url + "/v1/models")
    assert refused() == before + 1
    scrape = httpx.get(locked.url + "/metrics", headers=auth).text
    assert (
        'photofield_ai_http_requests_total{endpoint="/v1/models",method="GET",status="401"}'
        in scrape
    )


def test_metrics_open_leaves_only_the_scrape_open(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    srv = start_server(
        tmp_path, *tiny_float32, PHOTOFIELD_AI_API_KEY=KEY, PHOTOFIELD_AI_METRICS_OPEN="1"
    )
    try:
        assert httpx.get(srv.url + "/metrics").status_code == 200
        assert httpx.post(srv.url + "/text-embeddings", json={"texts": ["x"]}).status_code == 401
    finally:
        srv.stop()


def test_without_a_key_everything_is_open(server: ServerProcess) -> None:
    assert httpx.post(server.url + "/text-embeddings", json={"texts": ["x"]}).status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200


@pytest.mark.parametrize(
    ("header", "key"),
    [
        (b"Bearer abc", b"abc"),
        (b"bearer   abc ", b"abc"),
        (b"Basic " + base64.b64encode(b"user:pa:ss"), b"pa:ss"),
        (b"Basic " + base64.b64encode(b"nocolon"), None),
        (b"Basic ###", None),
        (b"Bearer", None),
        (b"Digest abc", None),
    ],
)
def test_presented_key(header: bytes, key: bytes | None) -> None:
    assert presented_key(header) == key


def test_an_unusable_key_is_a_settings_error() -> None:
    from photofield_ai.config import SettingsError

    for bad in ("has space", "tab\there", "ключ"):
        with pytest.raises(SettingsError, match="API_KEY"):
            Settings.from_env({"PHOTOFIELD_AI_API_KEY": bad})
