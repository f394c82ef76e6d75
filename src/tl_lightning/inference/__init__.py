"""Using a trained checkpoint: predictions for image files into a CSV, and self-describing ONNX / TorchScript
exports checked against PyTorch.
"""

# `export.export` stays in its module: re-exported here it would shadow the submodule `inference.export`.
from tl_lightning.inference.export import read_metadata
from tl_lightning.inference.predict import find_images, predict_files, write_predictions

__all__ = ["find_images", "predict_files", "read_metadata", "write_predictions"]
