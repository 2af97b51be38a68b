"""Dose-prediction networks, one file per architecture, registered by name (see :mod:`mddose.models.registry`)."""

from mddose.models.registry import (
    ModelConfig, ModelInfo, available_models, build_model, build_model_from_dict, info_of, kind_of, make_config,
    model_info,
    register_model,
)
# Importing each architecture registers it.
from mddose.models import c3d, diffdp, gbt, hd_unet, md_dose, sp_diffdose  # noqa: E402,F401

__all__ = ["ModelConfig", "ModelInfo", "available_models", "build_model", "build_model_from_dict", "info_of", "kind_of",
           "make_config", "model_info", "register_model"]
