"""From the federated model to the clinic: a trained model's prediction on a DICOM series, written as a DICOM-SEG
that references the series and a NIfTI mask on its grid (``oncofl predict``).

The series is read and preprocessed by the task's own code path (``TaskSpec.prepare_input``, the one ``load_case``
uses in training); the label map the network predicts returns to the series' grid through the inverse of that
preprocessing (:class:`oncofl.preprocess.GridMap`).
"""

from .job import JobSettings, read_job_settings
from .model import TrainedModel, file_sha256, load_model
from .outputs import write_mask, write_seg
from .run import Prediction, find_series, main, predict_folder, predict_series, write_prediction

__all__ = [
    "JobSettings",
    "Prediction",
    "TrainedModel",
    "file_sha256",
    "find_series",
    "load_model",
    "main",
    "predict_folder",
    "predict_series",
    "read_job_settings",
    "write_mask",
    "write_prediction",
    "write_seg",
]
