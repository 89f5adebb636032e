"""From the federated model to the clinic (``oncofl predict``): a trained model on new studies.

A segmentation is written as a DICOM-SEG that references its series and a NIfTI mask on the series' grid; a
classification as a probability of malignancy per image, nodule or case, in a DICOM Structured Report that
references the image (or the nodule's series and position) and in the research tables.

Every input is read and preprocessed by the task's own code path (``TaskSpec.prepare_input``, the one ``load_case``
uses in training); a predicted label map returns to the series' grid through the inverse of that preprocessing
(:class:`oncofl.preprocess.GridMap`).
"""

from .classify import classify, probability
from .inputs import PredictInput, find_inputs
from .job import JobSettings, read_job_settings
from .model import TrainedModel, file_sha256, load_model
from .outputs import write_mask, write_seg, write_sr
from .run import (
    Prediction,
    main,
    predict_folder,
    predict_inputs,
    predict_one,
    predict_series,
    write_prediction,
)
from .tables import CaseResult, write_tables

__all__ = [
    "CaseResult",
    "JobSettings",
    "PredictInput",
    "Prediction",
    "TrainedModel",
    "classify",
    "file_sha256",
    "find_inputs",
    "load_model",
    "main",
    "predict_folder",
    "predict_inputs",
    "predict_one",
    "predict_series",
    "probability",
    "read_job_settings",
    "write_mask",
    "write_prediction",
    "write_seg",
    "write_sr",
    "write_tables",
]
