"""The training pipeline: torch, torchvision and albumentations; exports ONNX with a model card."""
