"""Which stages may start now: the runner's bookkeeping, pure Python so it is cheap to test.

A stage is *ready* once every upstream stage of this run has finished (cached ones count as
finished). A ready stage is *admitted* when its resource request fits beside the stages already
running; Ray then places the work itself (Ray Train's placement group, the synthesis tasks).
A failed stage *blocks* every stage downstream of it, and nothing else: independent branches
run to the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

Resources = Mapping[str, float]


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    BLOCKED = "blocked"


@dataclass
class Schedule:
    """`needs`: the stages this run executes, each with its upstream stages *of this run* (a cached
    upstream is not listed: it is finished before the run starts). Keys keep the plan's order."""

    needs: Mapping[str, tuple[str, ...]]
    status: dict[str, Status] = field(init=False)
    blocked_by: dict[str, list[str]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.status = {name: Status.PENDING for name in self.needs}

    def ready(self) -> list[str]:
        return [name for name, needs in self.needs.items() if self.status[name] is Status.PENDING
                and all(self.status[need] is Status.FINISHED for need in needs)]

    def start(self, name: str) -> None:
        self.status[name] = Status.RUNNING

    def requeue(self, name: str) -> None:
        """A stage that will be tried again (a retry after a transient fault)."""
        self.status[name] = Status.PENDING

    def finish(self, name: str) -> None:
        self.status[name] = Status.FINISHED

    def fail(self, name: str) -> list[str]:
        """Marks `name` failed and blocks what depends on it; returns the stages newly blocked."""
        self.status[name] = Status.FAILED
        blocked = []
        for other in self.needs:
            if self.status[other] is Status.PENDING and name in self.upstream_of(other):
                self.status[other] = Status.BLOCKED
                self.blocked_by.setdefault(other, []).append(name)
                blocked.append(other)
        return blocked

    def upstream_of(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.needs[name])
        while todo:
            need = todo.pop()
            if need not in seen:
                seen.add(need)
                todo.extend(self.needs.get(need, ()))
        return seen

    def running(self) -> list[str]:
        return [name for name, status in self.status.items() if status is Status.RUNNING]

    def done(self) -> bool:
        return not any(s in (Status.PENDING, Status.RUNNING) for s in self.status.values())

    def names(self, status: Status) -> list[str]:
        return [name for name, s in self.status.items() if s is status]


def admit(ready: Iterable[str], requests: Mapping[str, Resources], running: Iterable[Resources],
          capacity: Resources, reserve_cpus: float = 0.0, max_parallel: int | None = None) -> list[str]:
    """The ready stages to start now, in the order given.

    A stage fits when, added to what is running, its request stays within `capacity` (the
    cluster's totals) less `reserve_cpus` CPUs left for Ray Data's own tasks. With nothing
    running a stage is always admitted, even one larger than the cluster: Ray queues it until
    nodes join (an autoscaler's cluster grows on demand), so the run never stalls here.
    """
    running = list(running)
    in_use: dict[str, float] = {}
    for request in running:
        add(in_use, request)
    count = len(running)
    chosen: list[str] = []
    for name in ready:
        if max_parallel is not None and count >= max_parallel:
            break
        request = requests[name]
        if count == 0 or fits(request, in_use, capacity, reserve_cpus):
            chosen.append(name)
            add(in_use, request)
            count += 1
    return chosen


def fits(request: Resources, in_use: Resources, capacity: Resources, reserve_cpus: float = 0.0) -> bool:
    for resource, amount in request.items():
        if amount <= 0:
            continue
        limit = capacity.get(resource, 0.0) - (reserve_cpus if resource == "CPU" else 0.0)
        if in_use.get(resource, 0.0) + amount > limit + 1e-9:
            return False
    return True


def add(total: dict[str, float], request: Resources) -> None:
    for resource, amount in request.items():
        total[resource] = total.get(resource, 0.0) + amount


def critical_path(durations: Mapping[str, float], needs: Mapping[str, Iterable[str]]) -> tuple[float, list[str]]:
    """The longest chain of stage durations through the DAG (a stage absent from `durations` took 0 s):
    the shortest wall time any number of parallel stages could reach."""
    longest: dict[str, tuple[float, list[str]]] = {}

    def chain(name: str) -> tuple[float, list[str]]:
        if name not in longest:
            before = max((chain(need) for need in needs.get(name, ())), default=(0.0, []))
            longest[name] = (before[0] + durations.get(name, 0.0), [*before[1], name])
        return longest[name]

    return max((chain(name) for name in needs), default=(0.0, []))
