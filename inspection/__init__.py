"""The shared core: model card, preprocessing, decisions, dataset layout, inspection log.

Nothing under ``inspection`` imports torch, torchvision, albumentations or ``training``:
a line PC installs only the serving extra.
"""

__version__ = "0.1.0"
