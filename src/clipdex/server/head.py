"""HEAD answered like GET without a body: FastAPI routes declared with GET refuse HEAD
(405), which link checkers, caches and `curl -I` use to ask about an image or a probe."""

from __future__ import annotations


class HeadAsGet:
    """ASGI middleware: a HEAD request runs its GET route; the headers (status, length,
    ETag, type) go out as they are, the body never does."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def headers_only(message):
            nonlocal finished
            if message["type"] != "http.response.body":
                await send(message)
            elif not finished and not message.get("more_body", False):
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app(dict(scope, method="GET"), receive, headers_only)
