"""Export (torch + onnx): the inversion objective, step graphs, bundle writer, parity checks."""
