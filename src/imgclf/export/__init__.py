"""Export of saved models to other runtimes (ONNX)."""
