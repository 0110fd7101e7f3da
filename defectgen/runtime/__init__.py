"""The edge runtime. Never imports torch: it runs where only numpy, onnxruntime and opencv exist."""
