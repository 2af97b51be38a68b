"""Prediction: whole patients with any checkpoint (:mod:`~mddose.predict.patient`), folders of patients into files
(:mod:`~mddose.predict.batch`, :mod:`~mddose.predict.files`), the prediction options and their precedence
(:mod:`~mddose.predict.options`) and the checkpoints shipped in the package (:mod:`~mddose.predict.shipped`).
How one patient is predicted is its model kind's (:meth:`mddose.kinds.base.ModelKind.predict`)."""

from mddose.predict.batch import predict_to_dir
from mddose.predict.files import OUTPUT_FORMATS, OUTPUT_LAYOUT, write_prediction
from mddose.predict.options import checkpoint_defaults, resolve_options
from mddose.predict.patient import Prediction, missing_rois, model_name, predict_patient, predict_resolved
from mddose.predict.shipped import resolve_checkpoint, shipped_checkpoints

_model_name = model_name             # the name benchmarks used before the predict/ package

__all__ = ["OUTPUT_FORMATS", "OUTPUT_LAYOUT", "Prediction", "checkpoint_defaults", "missing_rois", "model_name",
           "predict_patient", "predict_resolved", "predict_to_dir", "resolve_checkpoint", "resolve_options",
           "shipped_checkpoints", "write_prediction"]
