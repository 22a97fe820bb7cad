"""The simulators run against a real server: serving's fixtures (a tiny ONNX model in a registry, API keys)."""

from tests.serving.conftest import keys, models_dir

__all__ = ["keys", "models_dir"]
