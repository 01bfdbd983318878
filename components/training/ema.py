"""The exponential moving average of a method's generator weights (BasicSR's `net_g_ema`).

The average lives in a second copy of the method (`shadow`), built from the same config on
rank 0: validation scores it and the export is it, so neither ever runs a forward through a
DDP wrapper on one rank alone. The networks a method names in `Method.averaged` are averaged;
its other networks (discriminators, frozen upstream models) are copied in as they are before
the shadow is scored or exported.

Decay: `min(ema_decay, (1 + n) / (10 + n))` after n updates, TensorFlow's
ExponentialMovingAverage `num_updates` rule. With BasicSR's 0.999 from the first step, a 300-step
CPU run's average would still hold 74 % of the random initial weights (0.999 ** 300); the ramp
makes early averages short and reaches 0.999 after about 9,000 steps. Floating-point
parameters are averaged; buffers (BatchNorm statistics, a spectral norm's vectors) are copied.
"""

from __future__ import annotations

from collections.abc import Iterable

from components.models.base import Method
from components.networks.moving_average import accumulate


def decay_at(ema_decay: float, updates: int) -> float:
    """The decay of the `updates`-th update (1-based)."""
    return min(ema_decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """`shadow`'s averaged networks follow `live`'s; `updates` counts the updates (checkpointed)."""

    def __init__(self, live: Method, shadow: Method, ema_decay: float):
        self.live, self.shadow, self.ema_decay = live, shadow, ema_decay
        self.names = averaged_networks(live) if ema_decay > 0 else ()
        self.updates = 0
        self.copy_in(live.networks())  # the average starts at the live weights

    def update(self) -> None:
        if not self.names:
            return
        self.updates += 1
        decay = decay_at(self.ema_decay, self.updates)
        for name in self.names:
            accumulate(self.shadow.nets[name], self.live.unwrapped(name), decay)

    def sync(self) -> Method:
        """The shadow, its networks that are not averaged copied from the live method: what is scored and exported."""
        self.copy_in(name for name in self.live.networks() if name not in self.names)
        return self.shadow

    def copy_in(self, names: Iterable[str]) -> None:
        for name in names:
            self.shadow.nets[name].load_state_dict(self.live.unwrapped(name).state_dict())

    def state(self) -> dict:
        return {"updates": self.updates, "nets": {name: self.shadow.nets[name].state_dict() for name in self.names}}

    def load(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name in self.names if self.updates else ():
            self.shadow.nets[name].load_state_dict(state["nets"][name])


def averaged_networks(method: Method) -> tuple[str, ...]:
    """The method's networks that get an average: those in `Method.averaged` that it built."""
    return tuple(name for name in method.averaged if name in method.networks())
