"""Command line: `photofield-ai [serve]`, `photofield-ai download`, `photofield-ai --version`.

Start-up problems a user can fix — a bad setting, an unreachable URL, a model that does not
load, a port in use — end the program with one line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

from photofield_ai import __version__
from photofield_ai.config import Settings, SettingsError
from photofield_ai.fetch import ModelResolutionError
from photofield_ai.memory import tune_malloc
from photofield_ai.runtime import ModelLoadError, ProviderError

log = logging.getLogger("photofield_ai")
STARTUP_ERRORS = (SettingsError, ModelResolutionError, ModelLoadError, ProviderError)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str) -> int:
    print(f"photofield-ai: error: {message}", file=sys.stderr)
    return 1


def _check_bindable(host: str, port: int) -> None:
    """Fail before loading models and starting the server's lifespan, where a bind error would
    surface as a cancelled-lifespan traceback instead of one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def serve(settings: Settings) -> int:
    from photofield_ai.api.server import HttpServer
    from photofield_ai.app import create_app
    from photofield_ai.serving.loading import load_models

    try:
        _check_bindable(settings.host, settings.port)
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    models = load_models(settings)
    app = create_app(settings, models)
    engine = app.state.engine
    server = HttpServer(app, settings, engine.metrics, draining=engine.start_draining)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    log.info("Listening on %s:%d", settings.host, settings.port)
    try:
        server.run()
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    log.info("Stopped")
    return 0


def download(settings: Settings) -> int:
    from photofield_ai.serving.loading import resolve_face_models, resolve_models

    _, visual, textual = resolve_models(settings)
    paths = [visual, textual]
    if settings.faces_enabled is not False:
        try:
            paths += resolve_face_models(settings)
        except ModelResolutionError as exc:
            if settings.faces_enabled:
                raise
            log.warning("Face models not downloaded: %s", exc)
    for path in paths:
        if path is not None:
            print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    from photofield_ai import reference

    parser = argparse.ArgumentParser(
        prog="photofield-ai",
        description="CLIP image and text embeddings for Photofield, batched across requests. "
        "Configured with PHOTOFIELD_AI_* environment variables: see `photofield-ai serve "
        "--help` and `photofield-ai download --help`.",
    )
    parser.add_argument("--version", action="version", version=f"photofield-ai {__version__}")
    parser.set_defaults(command="serve")
    commands = parser.add_subparsers(title="commands", metavar="{serve,download}")
    for name, summary in (
        ("serve", "run the server (the default)"),
        ("download", "fetch the configured models into the models directory and exit"),
    ):
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=reference.plain_text(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(command=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tune_malloc()  # before any thread starts, so every arena follows it
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(str(exc))
    _configure_logging(settings.log_level)
    try:
        return serve(settings) if args.command == "serve" else download(settings)
    except STARTUP_ERRORS as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
