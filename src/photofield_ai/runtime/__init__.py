"""ONNX Runtime sessions: provider selection, dtype adaptation and the float16 CPU crash guard."""

from photofield_ai.runtime.providers import ProviderError, available_providers, select_providers
from photofield_ai.runtime.session import ModelLoadError, ModelSession, OnnxModel

__all__ = [
    "ModelLoadError",
    "ModelSession",
    "OnnxModel",
    "ProviderError",
    "available_providers",
    "select_providers",
]
