"""Live progress from anywhere in the cluster to the driver's terminal.

Stages and Ray Train workers push small dicts (`samples`, `step`, `loss`, ...) to one
`ProgressBoard` actor; the driver polls it and draws the table. An actor rather than a
file, so that it works the same when the store is s3:// and the workers are on other nodes.
"""

from __future__ import annotations

import time
from typing import Any

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self._stages: dict[str, dict[str, Any]] = {}

    def update(self, stage: str, fields: dict[str, Any]) -> None:
        self._stages.setdefault(stage, {}).update(fields, updated_at=time.time())

    def ran_on(self, stage: str, node: str) -> None:
        """A node that did some of the stage's work (a train worker, a synthesis task)."""
        nodes = self._stages.setdefault(stage, {}).setdefault("nodes", [])
        if node not in nodes:
            nodes.append(node)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self._stages


class StageProgress:
    """A stage's handle on the board; fire-and-forget so progress never slows the work."""

    def __init__(self, board: Any, stage: str):
        self.board = board
        self.stage = stage

    def update(self, **fields: Any) -> None:
        if self.board is not None:
            self.board.update.remote(self.stage, fields)

    def ran_on_this_node(self) -> None:
        if self.board is not None:
            self.board.ran_on.remote(self.stage, ray.util.get_node_ip_address())
