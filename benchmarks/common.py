"""What every benchmark shares: the run's configuration, the Photofield workloads, starting a
server on generated models, and markdown tables."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load import Workload
from photofield_ai.families import Kind
from photofield_ai.serving.loading import LoadedEmbeddingModel, load_embedding_model
from photofield_ai.testing.generate import generate
from photofield_ai.testing.server import ServerProcess, start_server
from tests.images import jpeg

NOISE_NOTE = (
    "Reading these: a shared VM's speed drifts by 10-20 % within minutes, so differences "
    "smaller than that are not findings. At C=1 batching on and off run the same path (a batch "
    "of one, started at once); a difference there is drift. `python -m benchmarks.compare` "
    "repeats one comparison in interleaved rounds when a number matters."
)
# The text workloads cycle through a few searches: with the text cache on, every one after the
# first would be a hit and the tables would measure the cache, not the model path. Section 7
# (benchmarks.features) measures the cache itself.
MODEL_PATH_ONLY = {"PHOTOFIELD_AI_TEXT_CACHE_SIZE": "0"}
TEXTS = (
    "beach sunset",
    "cat eyes",
    "a photo of a dog",
    "snow-covered mountains at dawn",
    "hawk",
    "birthday cake with candles",
    "old car in the desert",
    "city skyline at night",
)


def thumbnails() -> Workload:
    """Photofield's indexing request: one 256-px JPEG thumbnail (16 distinct ones in turn)."""
    return Workload("image", tuple(jpeg(256, 192, quality=85, seed=i) for i in range(16)))


def searches() -> Workload:
    return Workload("text", texts=TEXTS)


@dataclass(frozen=True)
class Config:
    gpu: bool
    quick: bool
    workdir: Path
    measure_s: float
    warmup_s: float
    client_processes: int

    @property
    def providers(self) -> list[str]:
        return (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if self.gpu
            else ["CPUExecutionProvider"]
        )

    @property
    def server_env(self) -> dict[str, str]:
        if self.gpu:
            return {
                "PHOTOFIELD_AI_RUNTIME": "",
                "PHOTOFIELD_AI_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
                **MODEL_PATH_ONLY,
            }
        return {"PHOTOFIELD_AI_RUNTIME": "cpu", **MODEL_PATH_ONLY}


def command_line(module: str, argv: list[str] | None) -> str:
    """How a report says it was made: `python -m benchmarks.<module>` and its arguments."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m benchmarks." + module, *args])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, IndexError):
        return None


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def start(cfg: Config, dtype: str, **env: str) -> ServerProcess:
    visual, textual = generate("vit-b-32", dtype, cfg.workdir / "models")
    return start_server(cfg.workdir / "servers", visual, textual, 600, **{**cfg.server_env, **env})


def bare_model(
    path: Path,
    providers: list[str],
    kind: Kind,
    intra_op_threads: int = 0,
    spin_during_calls: bool = False,
) -> LoadedEmbeddingModel:
    """A model as the server loads it, for session calls without the server around them."""
    return load_embedding_model(
        path,
        providers,
        kind,
        intra_op_threads=intra_op_threads,
        spin_during_calls=spin_during_calls,
    )


def parse_assignments(spec: str) -> dict[str, str]:
    """`VAR=value,VAR=value` → the extra environment of a server under comparison."""
    env = {}
    for assignment in filter(None, spec.split(",")):
        key, sep, value = assignment.partition("=")
        if not sep:
            raise SystemExit(f"not VAR=value: {assignment!r} in {spec!r}")
        env[key] = value
    return env


def publish(lines: list[str], out: Path | None, name: str) -> None:
    """Print a report; with `--out`, also record it as section `name` of that BENCHMARKS.md."""
    print("\n".join(lines))
    if out:
        record_section(out, name, lines)


def record_section(path: Path, name: str, lines: list[str]) -> None:
    """Write `lines` into BENCHMARKS.md between `<!-- name:start -->` and `<!-- name:end -->`,
    replacing what was there (or appending): sections that commands other than benchmarks.run
    record, and that its rerun keeps (report.KEPT_SECTIONS)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "\n".join([start, *lines, end])
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
