"""Which ONNX Runtime execution providers a session uses."""

from __future__ import annotations

import onnxruntime as ort

CPU = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
        "CoreMLExecutionProvider",
        "OpenVINOExecutionProvider",
        "SimulatedAccelerator",  # runtime.simulated: benchmarks and tests only
    }
)

# Providers that call a remote endpoint instead of running the model here; never implied by "all".
REMOTE_PROVIDERS = frozenset({"AzureExecutionProvider"})


class ProviderError(ValueError):
    """The requested providers cannot be used here; the message lists those that can."""


def available_providers() -> list[str]:
    """In ONNX Runtime's own preference order (accelerators first, CPU last)."""
    return list(ort.get_available_providers())


def select_providers(
    runtime: str | None, providers: tuple[str, ...] | None, available: list[str] | None = None
) -> list[str]:
    """The original service's rule: RUNTIME wins when set; else PROVIDERS; else all available.

    `cpu` is a shortcut for CPUExecutionProvider only. An unknown provider name is an error rather
    than a silent fallback: someone who asked for CUDA and got the CPU would see a 10× slowdown
    and no explanation.
    """
    have = available_providers() if available is None else available
    if runtime == "cpu":
        return [CPU]
    if runtime == "all" or not providers:
        return [p for p in have if p not in REMOTE_PROVIDERS]
    unknown = [p for p in providers if p not in have]
    if unknown:
        raise ProviderError(
            f"provider(s) not available: {', '.join(unknown)}; available: {', '.join(have)}"
        )
    return list(dict.fromkeys(providers))


def uses_accelerator(providers: list[str]) -> bool:
    return any(p in GPU_PROVIDERS for p in providers)
