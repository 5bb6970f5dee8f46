"""Indexing (image and face inference) runs at a lower thread priority than search."""

import os
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from photofield_ai.config import Settings, SettingsError
from photofield_ai.runtime.threads import (
    call_in_lowered_thread,
    lowered_executor,
    thread_nice_values,
)
from photofield_ai.testing.server import start_server
from tests.images import jpeg

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux threads")


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_threads_created_in_a_lowered_thread_inherit_its_priority() -> None:
    base = own_nice()
    seen: list[int] = []

    def make_thread() -> int:
        child = threading.Thread(target=lambda: seen.append(own_nice()))
        child.start()
        child.join()
        return own_nice()

    assert call_in_lowered_thread(5, make_thread) == min(19, base + 5)
    assert seen == [min(19, base + 5)]
    assert own_nice() == base  # the caller is untouched
    assert call_in_lowered_thread(0, own_nice) == base


def test_lowered_thread_errors_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        call_in_lowered_thread(3, fail)


def test_lowered_executor_workers_run_lowered() -> None:
    base = own_nice()
    with lowered_executor(4, 2, "test") as executor:
        assert executor.submit(own_nice).result() == min(19, base + 4)


@pytest.mark.parametrize("value", ["-1", "20"])
def test_indexing_nice_is_validated(value: str) -> None:
    with pytest.raises(SettingsError, match="INDEXING_NICE must be between 0 and 19"):
        Settings.from_env({"PHOTOFIELD_AI_INDEXING_NICE": value})
    assert Settings.from_env({"PHOTOFIELD_AI_INDEXING_NICE": "0"}).indexing_nice == 0


def server_thread_nice(pid: int) -> list[int]:
    values = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            values.append(os.getpriority(os.PRIO_PROCESS, int(task.name)))
        except OSError:
            continue
    return values


@pytest.mark.parametrize("nice", ["10", "0"])
def test_server_runs_image_inference_lowered_and_search_not(
    tiny_float32: tuple[Path, Path], tmp_path: Path, nice: str
) -> None:
    """The visual session's pool and call threads are lowered; the event loop and the textual
    session's threads are not (so something stays at the base priority)."""
    visual, textual = tiny_float32
    server = start_server(
        tmp_path,
        visual,
        textual,
        120,
        PHOTOFIELD_AI_INDEXING_NICE=nice,
        PHOTOFIELD_AI_INTRA_OP_THREADS="2",  # a pool thread besides the caller, on any machine
    )
    try:
        body, content_type = multipart_image(jpeg(64, 48, seed=2))
        request = urllib.request.Request(
            server.url + "/image-embeddings", body, {"Content-Type": content_type}
        )
        with urllib.request.urlopen(request) as response:
            assert response.status == 200
        values = server_thread_nice(server.process.pid)
        base = own_nice()
        lowered = [v for v in values if v > base]
        assert base in values
        if nice == "0":
            assert not lowered
        else:
            # the visual session's intra-op pool thread and the thread that made the call
            assert len(lowered) >= 2 and set(lowered) == {min(19, base + 10)}
    finally:
        server.stop()


def multipart_image(data: bytes) -> tuple[bytes, str]:
    boundary = "priority-test"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_thread_nice_values_lists_this_process() -> None:
    assert threading.get_native_id() in thread_nice_values()
