"""Pure CLIP knowledge: image preprocessing, the BPE tokenizer and the wire encoding.

Nothing here knows about HTTP, queues or ONNX Runtime sessions, so every function is tested with
plain calls.
"""
