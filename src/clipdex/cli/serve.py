"""`clipdex serve`: the HTTP API and the web page over an index (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.options import handle_errors, index_option, runtime_options
from clipdex.server.options import DEFAULT_HOST, DEFAULT_PORT, ServerOptions, is_loopback


def read_token(token_file: Path | None) -> str | None:
    """The token in `token_file` (first line, stripped), or None without one."""
    if token_file is None:
        return None
    try:
        token = token_file.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read the token file {token_file}: {exc}") from None
    if not token or len(token[0].strip()) < 16:
        raise click.ClickException(
            f"the token file {token_file} must hold a token of at least 16 characters"
        )
    return token[0].strip()


def check_bind(host: str, token: str | None, no_auth: bool) -> None:
    if not is_loopback(host) and token is None and not no_auth:
        raise click.ClickException(
            f"--host {host} accepts connections from other machines: give --token-file FILE "
            "(or --no-auth to serve without one)"
        )


def serve(index_dir: Path, host: str, port: int, options: ServerOptions) -> None:
    """Run uvicorn on the app until Ctrl-C; prints the address first."""
    import socket

    import uvicorn

    from clipdex.server.app import create_app

    try:  # say so now, not after printing an address that nothing serves
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror}") from None
    app = create_app(index_dir, options=options)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"clipdex: serving {index_dir} at http://{shown}:{port}  (Ctrl-C stops)")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,
    )


@click.command("serve")
@index_option
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to serve on.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the bearer token API requests must carry (required off loopback).",
)
@click.option("--no-auth", is_flag=True, help="Serve another host without a token.")
@click.option("--cors", "cors_origin", metavar="ORIGIN", help="Allow this origin (CORS).")
@click.option(
    "--no-batching",
    is_flag=True,
    help="Answer each text query alone instead of batching concurrent ones.",
)
@click.option(
    "--text-path",
    type=click.Choice(["tower", "full"]),
    default="tower",
    hidden=True,
    help="Encode text queries with the short text-tower pass, or the whole model (benchmarks).",
)
@runtime_options
@handle_errors
def serve_command(
    index_dir,
    host,
    port,
    token_file,
    no_auth,
    cors_origin,
    no_batching,
    text_path,
    device,
    precision,
) -> None:
    """Serve an index: a search page and a JSON API (OpenAPI at /docs).

    Binds 127.0.0.1 unless told otherwise; any other address needs --token-file. The
    server only reads the index: run `clipdex index` meanwhile and new images appear.

    \b
    Example:
        clipdex serve
        clipdex serve --index photos.clipdex --host 0.0.0.0 --token-file token.txt
    """
    from clipdex.api.folder import index_exists
    from clipdex.errors import IndexNotFoundError

    token = read_token(token_file)
    check_bind(host, token, no_auth)
    if not index_exists(index_dir):
        raise IndexNotFoundError(f"no index at {index_dir}; index some images first")
    options = ServerOptions(
        token=token,
        device=device,
        precision=precision,
        batching=not no_batching,
        text_tower=text_path == "tower",
        cors_origin=cors_origin,
    )
    serve(index_dir, host, port, options)
