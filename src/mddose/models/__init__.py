"""Denoisers and other dose-prediction networks, one file per architecture, registered by name."""

from mddose.models.registry import (
    ModelConfig, ModelInfo, available_models, build_model, build_model_from_dict, info_of, make_config, model_info,
    register_model,
)
from mddose.models import md_dose  # noqa: E402,F401  (registers "md-dose")

__all__ = ["ModelConfig", "ModelInfo", "available_models", "build_model", "build_model_from_dict", "info_of",
           "make_config", "model_info", "register_model"]
