"""The pipeline as a DAG of stages: order, fingerprints, and the plan of what to run.

Pure Python on purpose (no Ray, no MLflow, no filesystem): the runner hands in what the
store holds through a `StoreView`, so planning is cheap, testable and explains itself.

A stage's fingerprint is the hash of (kind, code version, resolved config, upstream
fingerprints). Its output lives at `<store>/stages/<stage>/<fingerprint>/`; a stage is *cached*
when the manifest there is complete and the files it lists are there, *stale* when an earlier
output of that stage exists under another fingerprint (the plan says which config key or
upstream changed) or the output at this one is damaged, and *missing* when the stage never
produced anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol


class DagError(ValueError):
    """The pipeline's stages do not form a valid DAG."""


class SelectionError(ValueError):
    """`--only` / `--from` / `--force` cannot be honoured (unknown stage, missing upstream)."""


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    needs: tuple[str, ...]
    config: Mapping[str, Any]  # the resolved, JSON-able config section
    code_version: str


@dataclass(frozen=True)
class StageRecord:
    """What the store says about an earlier output of a stage (read from its manifest)."""

    fingerprint: str
    config: Mapping[str, Any]
    upstream: Mapping[str, str]  # upstream stage name -> fingerprint it was built from
    code_version: str


DAMAGE_SHOWN = 3  # problems a damaged stage's reason names; the rest are counted


class StoreView(Protocol):
    def is_complete(self, stage: str, fingerprint: str) -> bool: ...
    # Asked of complete outputs only: what is wrong with their files ([] when whole).
    def damage(self, stage: str, fingerprint: str) -> list[str]: ...
    def latest(self, stage: str) -> StageRecord | None: ...


class State(str, Enum):
    CACHED = "cached"
    STALE = "stale"
    MISSING = "missing"


@dataclass(frozen=True)
class PlanEntry:
    stage: Stage
    fingerprint: str
    state: State
    reasons: tuple[str, ...] = ()
    will_run: bool = False


@dataclass(frozen=True)
class Selection:
    only: str | None = None
    start: str | None = None  # --from
    force: tuple[str, ...] = field(default_factory=tuple)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value hashes the same everywhere."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def fingerprint(stage: Stage, upstream: Mapping[str, str]) -> str:
    payload = {
        "kind": stage.kind,
        "code_version": stage.code_version,
        "config": stage.config,
        "upstream": dict(upstream),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


class Pipeline:
    def __init__(self, stages: Iterable[Stage]):
        self.stages: dict[str, Stage] = {}
        for stage in stages:
            if stage.name in self.stages:
                raise DagError(f"stage '{stage.name}' is defined twice")
            self.stages[stage.name] = stage
        self._check_needs()
        self.order: list[str] = self._topological_order()

    def _check_needs(self) -> None:
        for stage in self.stages.values():
            for need in stage.needs:
                if need not in self.stages:
                    known = ", ".join(sorted(self.stages))
                    raise DagError(f"stage '{stage.name}' needs unknown stage '{need}' (stages: {known})")

    def _topological_order(self) -> list[str]:
        """Kahn's algorithm; ties broken by declaration order so plans read as written."""
        declared = list(self.stages)
        remaining = {name: set(self.stages[name].needs) for name in declared}
        order: list[str] = []
        while remaining:
            ready = [name for name in declared if name in remaining and not remaining[name]]
            if not ready:
                raise DagError(f"stages form a cycle: {' -> '.join(self._find_cycle(remaining))}")
            for name in ready:
                order.append(name)
                del remaining[name]
                for needs in remaining.values():
                    needs.discard(name)
        return order

    def _find_cycle(self, remaining: Mapping[str, set[str]]) -> list[str]:
        start = next(iter(remaining))
        path = [start]
        while True:
            nxt = sorted(remaining[path[-1]])[0]
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            path.append(nxt)

    def upstream_of(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.stages[name].needs)
        while todo:
            need = todo.pop()
            if need not in seen:
                seen.add(need)
                todo.extend(self.stages[need].needs)
        return seen

    def downstream_of(self, name: str) -> set[str]:
        return {other for other in self.stages if name in self.upstream_of(other)}

    def fingerprints(self) -> dict[str, str]:
        prints: dict[str, str] = {}
        for name in self.order:
            stage = self.stages[name]
            prints[name] = fingerprint(stage, {need: prints[need] for need in stage.needs})
        return prints

    def plan(self, store: StoreView, selection: Selection = Selection()) -> list[PlanEntry]:
        self._check_selection(selection)
        prints = self.fingerprints()
        states = {name: self._state(name, prints, store) for name in self.order}
        to_run = self._stages_to_run(selection, {n: s[0] for n, s in states.items()})
        self._check_upstream_present(selection, to_run, {n: s[0] for n, s in states.items()})
        return [
            PlanEntry(self.stages[n], prints[n], states[n][0], states[n][1], n in to_run)
            for n in self.order
        ]

    def _check_selection(self, selection: Selection) -> None:
        named = [("--only", selection.only), ("--from", selection.start)]
        named += [("--force", name) for name in selection.force]
        for flag, name in named:
            if name is not None and name not in self.stages:
                raise SelectionError(f"{flag} names unknown stage '{name}' (stages: {', '.join(self.order)})")
        if selection.only and selection.start:
            raise SelectionError("--only and --from cannot be combined")

    def _stages_to_run(self, selection: Selection, states: Mapping[str, State]) -> set[str]:
        if selection.only:
            return {selection.only}
        if selection.start:
            return {selection.start} | self.downstream_of(selection.start)
        to_run = {name for name, state in states.items() if state is not State.CACHED}
        for name in selection.force:
            # a forced stage's outputs change, so what consumed them must be rebuilt too
            to_run |= {name} | self.downstream_of(name)
        return to_run

    def _check_upstream_present(self, selection: Selection, to_run: set[str], states: Mapping[str, State]) -> None:
        target = selection.only or selection.start
        if target is None:
            return
        for name in self.order:
            if name in to_run:
                continue
            if name in self.upstream_of(target) and states[name] is not State.CACHED:
                raise SelectionError(
                    f"stage '{target}' needs '{name}', which has no complete output for this config "
                    f"({states[name].value}); run it first, e.g. `facerestore run CONFIG --only {name}`"
                )

    def _state(self, name: str, prints: Mapping[str, str], store: StoreView) -> tuple[State, tuple[str, ...]]:
        if store.is_complete(name, prints[name]):
            problems = store.damage(name, prints[name])
            if not problems:
                return State.CACHED, ()
            # Stale, not missing: rerunning rebuilds only what is damaged. Downstream keeps its
            # fingerprint, so it stays cached.
            shown = problems[:DAMAGE_SHOWN]
            if len(problems) > DAMAGE_SHOWN:
                shown.append(f"{len(problems) - DAMAGE_SHOWN} more")
            return State.STALE, (f"damaged: {'; '.join(shown)}",)
        previous = store.latest(name)
        if previous is None:
            return State.MISSING, ()
        stage = self.stages[name]
        upstream = {need: prints[need] for need in stage.needs}
        return State.STALE, tuple(staleness_reasons(stage, upstream, previous))


def staleness_reasons(stage: Stage, upstream: Mapping[str, str], previous: StageRecord) -> list[str]:
    reasons = [f"config key '{stage.name}.{key}' changed: {old!r} -> {new!r}"
               for key, old, new in changed_keys(previous.config, stage.config)]
    for need, fp in upstream.items():
        before = previous.upstream.get(need)
        if before != fp:
            reasons.append(f"upstream '{need}' changed ({(before or 'none')[:8]} -> {fp[:8]})")
    if previous.code_version != stage.code_version:
        reasons.append(f"stage code version changed ({previous.code_version} -> {stage.code_version})")
    if not reasons:
        reasons.append("previous output is incomplete (interrupted run)")
    return reasons


_ABSENT = object()


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two nested config dicts."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        changes: list[tuple[str, Any, Any]] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            changes += changed_keys(old.get(key, _ABSENT), new.get(key, _ABSENT), path)
        return changes
    if old == new:
        return []
    return [(prefix, None if old is _ABSENT else old, None if new is _ABSENT else new)]
