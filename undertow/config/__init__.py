"""Project files -> validated models."""

from undertow.config.loader import LoadedProject, load_project
from undertow.config.models import FieldSpec, Mode, ModelConfig, ProjectConfig, SyncConfig

__all__ = [
    "FieldSpec",
    "LoadedProject",
    "Mode",
    "ModelConfig",
    "ProjectConfig",
    "SyncConfig",
    "load_project",
]
