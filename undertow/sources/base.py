"""What a source is: a warehouse that compiles a model's SQL and streams its rows as Arrow.

A source module subclasses :class:`Source`, sets ``name`` and a pydantic ``Config``, and
implements :meth:`check`, :meth:`describe` and :meth:`extract`. Drivers are imported lazily;
a missing one raises :func:`missing_driver`, which prints the exact ``pip install``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from undertow.errors import SourceError

DEFAULT_BATCH_ROWS = 65_536


class SourceConfig(BaseModel):
    """Base of every source's config model: ``type`` selects the connector."""

    model_config = ConfigDict(extra="forbid")
    type: str


class Source(ABC):
    """Base of every source connector. Not thread-safe: one instance per run."""

    name: ClassVar[str]
    Config: ClassVar[type[SourceConfig]]

    def __init__(self, config: SourceConfig, *, name: str, base_dir: str = ".") -> None:
        self.config = config
        self.instance_name = name
        self.base_dir = base_dir

    @abstractmethod
    def check(self) -> None:
        """Connect and run a trivial query; raise SourceError saying how to fix it."""

    @abstractmethod
    def describe(self, sql: str, *, model: str) -> pa.Schema:
        """Compile ``sql`` without reading its rows; raise ModelError with the position."""

    @abstractmethod
    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        """Run ``sql`` and stream its rows; memory stays bounded by ``batch_rows``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def missing_driver(package: str, extra: str) -> SourceError:
    """The error for a driver that is not installed, with the exact command to fix it."""
    return SourceError(
        f"the {package!r} driver is not installed",
        hint=f'pip install "undertow[{extra}]"',
    )
