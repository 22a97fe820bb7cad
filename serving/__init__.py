"""The reject API for line controllers: FastAPI + onnxruntime + OpenCV, no torch."""
