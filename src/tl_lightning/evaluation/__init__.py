"""What a trained model is worth and why: temperature scaling and calibration error, the test report (per-class
metrics, confusion matrix, top losses, reliability) and its figures, the linear probe of frozen features, and
Grad-CAM figures of files.
"""

from tl_lightning.evaluation.calibration import collect_logits, expected_calibration_error, fit_temperature
from tl_lightning.evaluation.explain import explain_files, top_loss_files
from tl_lightning.evaluation.probe import ProbeResult, linear_probe
from tl_lightning.evaluation.report import ClassReport, summary_table, write_metrics, write_report

__all__ = [
    "ClassReport",
    "ProbeResult",
    "collect_logits",
    "expected_calibration_error",
    "explain_files",
    "fit_temperature",
    "linear_probe",
    "summary_table",
    "top_loss_files",
    "write_metrics",
    "write_report",
]
