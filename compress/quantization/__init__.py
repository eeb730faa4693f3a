"""Quantization: the scheme (which layer gets which precision, chosen on validation data) in ``search``,
the backend (onnxruntime writes the file) in ``backend``. The ``quantize`` stage uses both."""
