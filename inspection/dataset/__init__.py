"""The standard dataset layout, its generator and its importers (numpy/OpenCV only)."""

from inspection.dataset.layout import Dataset, Sample, read_dataset, write_dataset

__all__ = ["Dataset", "Sample", "read_dataset", "write_dataset"]
