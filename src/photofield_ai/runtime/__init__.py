"""ONNX Runtime only: provider selection, sessions (dtype adaptation, the float16 crash guard),
usable CPUs and the lowered threads indexing work runs in."""

from photofield_ai.runtime.providers import ProviderError, available_providers, select_providers
from photofield_ai.runtime.session import ModelLoadError, OnnxSession

__all__ = [
    "ModelLoadError",
    "OnnxSession",
    "ProviderError",
    "available_providers",
    "select_providers",
]
