"""Prediction with a saved model: `Predictor`, its inputs, its ONNX Runtime backend and its writer."""
