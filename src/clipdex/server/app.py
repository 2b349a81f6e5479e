"""The FastAPI application: `create_app(index_folder, token=None, ...)`.

Routes live in routes_search.py and routes_images.py; guards.py checks the token and the
body size before any route runs; state.py holds the index and the warm model. Every error
is JSON `{"detail": "one message"}` with its status; bad input never gives a 5xx.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipdex.errors import (
    CatalogError,
    ClipdexError,
    ImageDecodeError,
    IndexNotFoundError,
    ModelMismatchError,
    QueryError,
    SourceError,
)
from clipdex.server.batching import TextBatcher
from clipdex.server.guards import Guards
from clipdex.server.head import HeadAsGet
from clipdex.server.options import ServerOptions
from clipdex.server.routes_images import router as images_router
from clipdex.server.routes_search import router as search_router
from clipdex.server.state import ModelNotReady, ServerState

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("clipdex.server")


def create_app(
    index_folder: str | Path, token: str | None = None, options: ServerOptions | None = None
) -> FastAPI:
    """The API and the page over one index folder.

    Args:
        index_folder: the index to serve (read only: the server never writes it).
        token: the bearer token /api requests must carry (None: none needed).
        options: limits, batching, device (ServerOptions()); its token is replaced by
            `token` when one is given.
    """
    options = options or ServerOptions()
    if token is not None:
        from dataclasses import replace

        options = replace(options, token=token)
    state = ServerState(index_folder, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading()
        try:
            yield
        finally:
            await app.state.batcher.close()
            state.stop()

    app = FastAPI(
        title="clipdex",
        version="1",
        summary="Search, browse and label an image index by text or image (CLIP).",
        lifespan=lifespan,
    )
    app.state.clipdex = state
    app.state.batcher = TextBatcher(
        state.encode_texts,
        state.search_vectors,
        options.batch_window_ms / 1000,
        options.max_batch,
    )
    app.include_router(search_router)
    app.include_router(images_router)
    _add_probes(app, state)
    _add_error_handlers(app)
    _add_static(app)
    if options.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=[options.cors_origin],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization"],
        )
    app.add_middleware(HeadAsGet)
    app.add_middleware(
        Guards,
        token=options.token,
        max_body=options.max_upload_bytes + 65536,
        timeout_s=options.request_timeout_s,
    )
    return app


def _add_probes(app: FastAPI, state: ServerState) -> None:
    @app.get("/healthz", tags=["probes"], summary="The process answers (always 200).")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["probes"],
        summary="200 once the model is loaded and warm, 503 before.",
        responses={503: {"description": "the model is not loaded yet"}},
    )
    def readyz() -> JSONResponse:
        if state.model is None:
            detail = "the model is loading" + (
                f": {state.model_error}" if state.model_error else ""
            )
            return JSONResponse({"detail": detail}, status_code=503)
        return JSONResponse({"status": "ready", "model": state.model.identity.describe()})


def _add_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")


#: Library errors -> HTTP status. A ClipdexError not listed is a 400 (the request's fault).
STATUS_OF = (
    (IndexNotFoundError, 503),
    (ModelMismatchError, 503),
    (CatalogError, 503),
    (ImageDecodeError, 415),
    (SourceError, 404),
    (QueryError, 400),
)


def status_of(exc: ClipdexError) -> int:
    return next((status for kind, status in STATUS_OF if isinstance(exc, kind)), 400)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClipdexError)
    async def library_error(_: Request, exc: ClipdexError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))

    @app.exception_handler(ModelNotReady)
    async def not_ready(_: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def validation_message(exc: RequestValidationError) -> str:
    """One line: the first problem, with the parameter it is about."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body"))
    message = str(first.get("msg", "invalid"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else message + more
