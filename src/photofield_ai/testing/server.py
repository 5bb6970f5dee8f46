"""Start a real photofield-ai server process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, and theirs (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_name(pid: int) -> str:
    """The name a process gave its main thread (`worker-N`, `inference`), else its program."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> dict[str, int]:
        """pid by name (`worker-0`, ...) of a multi-process server's HTTP workers."""
        found = {process_name(p): p for p in descendants(self.process.pid)}
        return {name: pid for name, pid in found.items() if name.startswith("worker-")}

    def inference_pid(self) -> int | None:
        return next(
            (p for p in descendants(self.process.pid) if process_name(p) == "inference"), None
        )

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_server(
    workdir: Path,
    visual: Path | None,
    textual: Path | None,
    startup_timeout: float = 120,
    /,
    **env: str,
) -> ServerProcess:
    """Run `python -m photofield_ai` as a user would, with PHOTOFIELD_AI_* from `env`."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOFIELD_AI_")}
    full_env.update(
        {
            "PHOTOFIELD_AI_HOST": "127.0.0.1",
            "PHOTOFIELD_AI_PORT": str(port),
            "PHOTOFIELD_AI_MODELS_DIR": str(workdir / "models"),
            "PHOTOFIELD_AI_RUNTIME": "cpu",
            # Face models are downloaded by default; tests and benchmarks opt in with fakes.
            "PHOTOFIELD_AI_FACES_ENABLED": "0",
            # No orchestrator to wait for: `stop` (SIGTERM) would otherwise wait the default 5 s
            # of accepting before draining. Tests of the delay set it.
            "PHOTOFIELD_AI_SHUTDOWN_DELAY_S": "0",
            **({"PHOTOFIELD_AI_VISUAL_MODEL": str(visual)} if visual else {}),
            **({"PHOTOFIELD_AI_TEXTUAL_MODEL": str(textual)} if textual else {}),
            **env,
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "photofield_ai"], env=full_env, stdout=log, stderr=log
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        if _is_ready(server.url):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


@contextlib.contextmanager
def serve_in_thread(app: Starlette, startup_timeout: float = 60) -> Iterator[str]:
    """Serve an app built in this process on a loopback port, from a thread, with the same HTTP
    server as `photofield-ai serve`.

    For tests that must reach inside the server (inject a failing model, a slow one), yet still
    talk to it over real HTTP. Yields the base URL.
    """
    from photofield_ai.api.server import HttpServer
    from photofield_ai.config import Settings

    engine = app.state.engine
    port = free_port()
    settings = dataclasses.replace(
        engine.settings, host="127.0.0.1", port=port, shutdown_grace_s=1.0
    )
    assert isinstance(settings, Settings)
    server = HttpServer(app, settings, engine.metrics, draining=engine.start_draining)
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve(handle_signals=False))

    thread = threading.Thread(target=run, daemon=True, name="http-test")
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout
    while not _is_ready(url):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("in-process server did not become ready")
        time.sleep(0.05)
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(server.stop)
        thread.join(30)
