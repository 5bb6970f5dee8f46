"""Test and benchmark helpers: generators of CLIP-shaped ONNX models (real weights cannot be
downloaded everywhere this project is built)."""
