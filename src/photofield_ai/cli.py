"""Command line: `photofield-ai [serve]`, `photofield-ai download`, `photofield-ai --version`.

Start-up problems a user can fix — a bad setting, an unreachable URL, a model that does not
load, a port in use — end the program with one line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from photofield_ai import __version__
from photofield_ai.config import Settings, SettingsError
from photofield_ai.fetch import ModelResolutionError
from photofield_ai.logs import configure_logging
from photofield_ai.memory import tune_process
from photofield_ai.serving.loading import STARTUP_ERRORS

log = logging.getLogger("photofield_ai")


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
    from photofield_ai.runtime.threads import exit_past_running_calls
    from photofield_ai.serving.layout import workers
    from photofield_ai.serving.loading import accelerated, load_models

    try:
        _check_bindable(settings.host, settings.port)
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    count = workers(settings, accelerated(settings))
    if count > 1:
        from photofield_ai.serving import inference
        from photofield_ai.supervisor import Supervisor

        return Supervisor(settings, count, run_worker, inference.main).run()
    models = load_models(settings)
    app = create_app(settings, models)
    engine = app.state.engine
    server = HttpServer(app, settings, engine.metrics, draining=engine.start_draining)
    log.info("Listening on %s:%d", settings.host, settings.port)
    try:
        server.run()
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    exit_past_running_calls()
    log.info("Stopped")
    return 0


def run_worker(settings: Settings, worker: int, socket_path: str, slab: str) -> None:
    """One HTTP worker process of the multi-process server (started by the supervisor)."""
    from photofield_ai.api.server import HttpServer, reuse_port_socket
    from photofield_ai.app import create_app
    from photofield_ai.metrics import Metrics
    from photofield_ai.runtime.threads import name_native_thread
    from photofield_ai.serving.remote import RemoteEngine

    tune_process()
    configure_logging(settings.log_level)
    name_native_thread(f"worker-{worker}")
    # Ctrl-C reaches the whole process group; the supervisor turns it into SIGUSR2.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine = RemoteEngine(settings, Metrics(), Path(socket_path), str(worker), slab)
    app = create_app(settings, None, engine)
    HttpServer(
        app,
        settings,
        engine.metrics,
        draining=engine.start_draining,
        sockets=[reuse_port_socket(settings.host, settings.port)],
        signals={signal.SIGTERM: settings.shutdown_delay_s, signal.SIGUSR2: 0.0},
    ).run()


def download(settings: Settings) -> int:
    """Fetch the configured models; a file fetched before is checked against the sha256
    recorded when it was downloaded, and fetched again if it changed (a shared cache)."""
    from photofield_ai.serving.loading import resolve_face_models, resolve_models

    _, visual, textual = resolve_models(settings, verify=True)
    paths: list[object] = [visual, textual]
    if settings.faces_enabled is not False:
        try:
            paths += resolve_face_models(settings, verify=True)
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
    tune_process()  # before any thread starts, so every arena follows it
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(str(exc))
    configure_logging(settings.log_level)
    try:
        return serve(settings) if args.command == "serve" else download(settings)
    except STARTUP_ERRORS as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
