"""Project files -> validated models."""

from undertow.config.models import FieldSpec, Mode, ModelConfig, ProjectConfig, SyncConfig

__all__ = ["FieldSpec", "Mode", "ModelConfig", "ProjectConfig", "SyncConfig"]
