"""Model families: how items become model input and outputs become embeddings (base.py).
The registry below is the one place a family is added; `PHOTOFIELD_AI_MODEL_FAMILY` picks one."""

from photofield_ai.families import clip, toy
from photofield_ai.families.base import (
    KINDS,
    DefaultModels,
    Encoder,
    ImageEncoder,
    Kind,
    ModelFamily,
    ModelSpec,
    TextEncoder,
)

FAMILIES: dict[str, ModelFamily] = {
    clip.FAMILY.name: clip.FAMILY,
    toy.FAMILY.name: toy.FAMILY,
}

__all__ = [
    "FAMILIES",
    "KINDS",
    "DefaultModels",
    "Encoder",
    "ImageEncoder",
    "Kind",
    "ModelFamily",
    "ModelSpec",
    "TextEncoder",
]
