"""What every part of :class:`~undertow.state.cluster.ClusterState` stands on: the store."""

from __future__ import annotations

from typing import Any

from undertow.state.store import StateStore


class ClusterBase:
    """The project's state store; each transaction is one of its own (``store._tx``)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def _tx(self) -> Any:
        return self.store._tx()
