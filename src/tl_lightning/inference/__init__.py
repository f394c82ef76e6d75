"""Using a trained checkpoint: predictions for image files into a CSV, an HTTP endpoint (`serve`, LitServe),
self-describing ONNX / TorchScript exports checked against PyTorch, int8 ONNX (`quantize`), timm's format (`hub`).

`serve`, `quantize` and `hub` need their extras and are imported from their modules, not here.
"""

# `export.export` stays in its module: re-exported here it would shadow the submodule `inference.export`.
from tl_lightning.inference.export import read_metadata
from tl_lightning.inference.predict import find_images, predict_files, write_predictions

__all__ = ["find_images", "predict_files", "read_metadata", "write_predictions"]
