"""ASGI guards in front of every route: the bearer token, the request body's size, a time
limit per request, and security headers (nosniff, a strict Content-Security-Policy, no
framing)."""

from __future__ import annotations

import asyncio
import hmac
import json
from urllib.parse import parse_qs

#: Paths anyone may reach: probes, the page and the schema (they hold no index data).
OPEN_PATHS = ("/healthz", "/readyz")
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
DOCS_CSP = (  # FastAPI's /docs page loads swagger-ui inline; it reads no index data
    "default-src 'self'; img-src 'self' data: https:; style-src 'self' 'unsafe-inline' https:; "
    "script-src 'self' 'unsafe-inline' https:; object-src 'none'; frame-ancestors 'none'"
)


async def send_json(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guards:
    """Refuses a request without the token (401) or with a body over the limit (413),
    before the route runs, answers 503 for one that runs past `timeout_s` (a client that
    sends its body slowly, an overloaded model), and adds security headers to every
    response."""

    def __init__(self, app, token: str | None, max_body: int, timeout_s: float = 120.0):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        # A CORS preflight (OPTIONS) carries no token and reads nothing: let it through.
        needs_token = path.startswith("/api/") and scope.get("method") != "OPTIONS"
        if self.token is not None and needs_token and not self._authorised(scope):
            await send_json(
                send,
                401,
                "a valid token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_json(send, 400, "the Content-Length header is not a number")
                return
            if declared > self.max_body:
                await send_json(send, 413, self._too_large())
                return
        state = {"received": 0, "refused": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body and not state["refused"]:
                    state["refused"] = True
                    if not state["started"]:
                        state["started"] = True
                        await send_json(send, 413, self._too_large())
                    return {"type": "http.disconnect"}
            return message

        docs = path in ("/docs", "/redoc") or path.startswith("/docs/")

        async def guarded_send(message):
            if state["refused"] and message["type"].startswith("http.response"):
                return  # our 413 went out already; drop what the app says after it
            if message["type"] == "http.response.start":
                state["started"] = True
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", (DOCS_CSP if docs else CSP).encode()),
                ]
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in extra if name not in names
                ]
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, limited_receive, guarded_send), self.timeout_s)
        except asyncio.TimeoutError:
            if not state["started"]:
                state["refused"] = state["started"] = True
                await send_json(send, 503, f"the request took longer than {self.timeout_s:g} s")

    def _too_large(self) -> str:
        return f"the request body is larger than the limit of {self.max_body:,} bytes"

    def _authorised(self, scope) -> bool:
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
                    return True
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return any(
            hmac.compare_digest(given.encode("utf-8", "replace"), self.token)
            for given in query.get("token", [])
        )
