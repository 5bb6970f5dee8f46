"""The optional access key (PHOTOFIELD_AI_API_KEY).

Two ways to present it, so that every client can: `Authorization: Bearer <key>` (OpenAI
clients, curl), or HTTP Basic with the key as the password — Photofield's Go client sends
Basic auth from the user info of its `ai.host` URL (`http://photofield:<key>@host:8081`),
because Go's http.Client does that for any request URL that carries one. The user name is not
checked.

Keys are compared as SHA-256 digests with `hmac.compare_digest`: constant time, and equal
lengths whatever was sent. Nothing here logs a header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from photofield_ai.api.middleware import send_error
from photofield_ai.metrics import Metrics

CHALLENGES = [
    (b"www-authenticate", b'Bearer realm="photofield-ai"'),
    (b"www-authenticate", b'Basic realm="photofield-ai", charset="UTF-8"'),
]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def presented_key(authorization: bytes) -> bytes | None:
    """The key in an Authorization header value (Bearer, or Basic's password), if any."""
    scheme, _, credentials = authorization.strip().partition(b" ")
    credentials = credentials.strip()
    if scheme.lower() == b"bearer":
        return credentials or None
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return None
        _user, colon, password = decoded.partition(b":")
        return password if colon else None
    return None


class RequireApiKey:
    """401 for any request without the key, except on the paths left open (liveness and
    readiness probes carry no credentials)."""

    def __init__(
        self, app: ASGIApp, key: str, open_paths: frozenset[str], metrics: Metrics
    ) -> None:
        self.app = app
        self._key_digest = _digest(key.encode())
        self.open_paths = open_paths
        self.metrics = metrics

    def authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                key = presented_key(value)
                return key is not None and hmac.compare_digest(_digest(key), self._key_digest)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        self.metrics.http_unauthorized.inc()
        has_header = any(name == b"authorization" for name, _ in scope.get("headers", []))
        message = (
            "the access key is wrong"
            if has_header
            else "this server needs an access key: send `Authorization: Bearer <key>`, or "
            "HTTP Basic auth with the key as the password"
        )
        await send_error(send, scope, 401, message, CHALLENGES)
