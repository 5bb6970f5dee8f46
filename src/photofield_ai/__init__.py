"""photofield-ai: a dynamic-batching CLIP embedding server for the Photofield photo app."""

__version__ = "0.1.0"
