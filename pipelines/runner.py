"""Executes a plan on Ray: stages at once where the DAG and the cluster allow, one MLflow parent
run with a nested child run per stage, and a run record in the store.

Each stage runs as a Ray task (no CPUs of its own) pinned to the driver's node; the work it
starts, Ray Train's worker group or the synthesis tasks, claims the resources and is placed by
Ray anywhere in the cluster. The driver only decides when a stage may start (pipelines/scheduler.py),
holds the stage's lease in the store (pipelines/leases.py), and writes down what happened.
A task rather than a thread in the driver so that a stalled or abandoned stage can be stopped:
cancelling the task ends the process that owns the stage's Ray Train controller and workers.

The order of a stage's writes is what makes crashes harmless: `stage.json` first (so the
plan can tell an interrupted output from a missing one), the data, `manifest.json` last.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from components import storage
from pipelines.config import ConfigError, PipelineConfig, resolved_config, resolved_section
from pipelines.context import Artifact, StageContext, StageOutput
from pipelines.dag import Pipeline, PlanEntry, Selection, Stage, State
from pipelines.leases import Lease, LeaseLost, lease_uri, leases_for
from pipelines.scheduler import Schedule, Status, admit
from pipelines.stages import stage_module
from pipelines.store import Store

TICK_S = 0.5  # how often the driver looks at its running stages
WATCH_EVERY_S = 5.0  # progress board reads (stall checks, nodes) and lease heartbeats, at most this often
# A stalled stage's task is force-cancelled; the kill of its worker lands a moment later, and Ray may
# hand that doomed worker the retry in the meantime (seen: a retry crashed 50 ms after it started).
RETRY_AFTER_CANCEL_S = 3.0


class RunFailed(RuntimeError):
    """The run ended with failed stages; independent ones ran to the end (unless --fail-fast)."""

    def __init__(self, run_id: str, failed: dict[str, str], blocked: list[str]):
        names = "; ".join(f"'{name}': {error}" for name, error in failed.items())
        more = f"; blocked downstream: {', '.join(blocked)}" if blocked else ""
        super().__init__(f"pipeline run {run_id} failed: {names}{more}")
        self.run_id, self.failed, self.blocked = run_id, failed, blocked


class StageStalled(RuntimeError):
    """A running stage reported no progress for `execution.stall_timeout_s`."""


def build_pipeline(cfg: PipelineConfig) -> Pipeline:
    return Pipeline(
        Stage(name, section.kind, section.needs, resolved_section(section), stage_module(section.kind).CODE_VERSION)
        for name, section in cfg.stages.items()
    )


def plan(cfg: PipelineConfig, selection: Selection = Selection(), verify: bool = False) -> list[PlanEntry]:
    store = Store(cfg.store, verify=verify)
    return build_pipeline(resolve_references(cfg, store)).plan(store, selection)


def resolve_references(cfg: PipelineConfig, store: Store) -> PipelineConfig:
    """The config with what its stages name outside the pipeline pinned (a stage kind's `resolve`:
    the train stage's `init_from` alias to a registered version), so the fingerprints, the plan
    and the run all see the same version. Raises ConfigError naming the stage."""
    stages = dict(cfg.stages)
    for name, section in cfg.stages.items():
        resolver = getattr(stage_module(section.kind), "resolve", None)
        if resolver is None:
            continue
        try:
            config = resolver(section.config, section.needs, set(cfg.stages), lambda: tracking_uri(cfg, store))
        except (LookupError, ValueError) as err:
            raise ConfigError(f"stages.{name}: {err}") from None
        stages[name] = section.model_copy(update={"config": config})
    return cfg.model_copy(update={"stages": stages})


def tracking_uri(cfg: PipelineConfig, store: Store) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri or store.default_tracking_uri()
    if storage.has_password(uri):  # it would be recorded in the run record; the message must not echo it
        raise ValueError("the tracking URI (MLFLOW_TRACKING_URI or tracking.uri) carries a password: give the "
                         "login as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead")
    return uri


def connect_ray(cfg: PipelineConfig, address: str | None = None) -> None:
    """Join the cluster named by --address / RAY_ADDRESS / the config, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    quiet: dict[str, Any] = {"log_to_driver": os.environ.get("FACERESTORE_RAY_LOGS") == "1", "include_dashboard": False}
    if address and address.startswith(("http://", "https://")):
        raise ValueError(f"{address} is a Ray Jobs (dashboard) address: send the run there with "
                         f"`facerestore submit CONFIG --address {address}`; `run` joins a cluster by its "
                         "GCS address (HEAD:6379) or `auto`")
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, **quiet)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    if not quiet["log_to_driver"]:
        # A training stage reads a small split once on the driver (components/data/ray_dataset.py);
        # Ray Data's INFO lines about that read would break into the live view.
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class Runner:
    cfg: PipelineConfig
    selection: Selection = Selection()
    address: str | None = None
    console: Console | None = None
    run_id: str | None = None  # given by `facerestore submit`, which prints it before the job starts
    max_parallel: int | None = None  # --max-parallel; else the config's execution.max_parallel
    fail_fast: bool | None = None  # --fail-fast; else the config's execution.fail_fast

    def run(self) -> dict[str, Any]:
        from pipelines.display import LiveView

        store = Store(self.cfg.store)
        self.cfg = resolve_references(self.cfg, store)  # the stages then run with what was planned
        pipeline = build_pipeline(self.cfg)
        entries = pipeline.plan(store, self.selection)
        if any(e.will_run for e in entries):
            from components.tracking.runs import check_login

            check_login(tracking_uri(self.cfg, store))  # a refused login fails here, before any work
        record = self._new_record(store, entries)
        store.save_run(record)
        if not any(e.will_run for e in entries):
            record.update(state="finished", finished_at=time.time())
            store.save_run(record)
            return record
        connect_ray(self.cfg, self.address)
        board = _progress_board()
        with LiveView(self.console or Console(), record, board):
            Execution(self, store, entries, record, board).run()
        if record["state"] == "failed":
            failed = {n: i.get("error", "") for n, i in record["stages"].items() if i["state"] == "failed"}
            blocked = [n for n, i in record["stages"].items() if i["state"] == "blocked"]
            raise RunFailed(record["run_id"], failed, blocked)
        return record

    def execution_options(self) -> dict[str, Any]:
        options = self.cfg.execution.model_dump()
        if self.max_parallel is not None:
            options["max_parallel"] = self.max_parallel
        if self.fail_fast is not None:
            options["fail_fast"] = self.fail_fast
        return options

    def _new_record(self, store: Store, entries: list[PlanEntry]) -> dict[str, Any]:
        return {
            "run_id": self.run_id or new_run_id(),
            "config_name": self.cfg.name,
            "config": resolved_config(self.cfg),
            "store": store.uri,
            "started_at": time.time(),
            "state": "running",
            "selection": {"only": self.selection.only, "from": self.selection.start, "force": list(self.selection.force)},
            "max_parallel": self.execution_options()["max_parallel"],
            "stages": {
                e.stage.name: {
                    "state": "pending" if e.will_run else ("cached" if e.state is State.CACHED else "skipped"),
                    "fingerprint": e.fingerprint,
                    "planned": e.state.value,
                    "reasons": list(e.reasons),
                    **_cached_metrics(store, e),
                }
                for e in entries
            },
        }


class Execution:
    """One run of the stages a plan selected: admits, launches, watches and records them."""

    def __init__(self, runner: Runner, store: Store, entries: list[PlanEntry], record: dict[str, Any], board: Any):
        import ray

        self.cfg, self.store, self.record, self.board = runner.cfg, store, record, board
        self.options = runner.execution_options()
        self.entries = {e.stage.name: e for e in entries}
        self.prints = {e.stage.name: e.fingerprint for e in entries}
        selected = [e.stage.name for e in entries if e.will_run]
        self.schedule = Schedule({name: tuple(n for n in self.entries[name].stage.needs if n in selected)
                                  for name in selected})
        self.requests = {name: stage_resources(self.cfg, name) for name in selected}
        self.leases = leases_for(store.uri, self.options["lease_ttl_s"])
        self.held: dict[str, Lease] = {}
        self.tasks: dict[Any, str] = {}  # Ray task -> stage
        self.not_before: dict[str, float] = {}  # a stage starts no earlier: a retry's backoff, another run's lease
        self.stalled: dict[str, str] = {}  # stage -> why its task was cancelled
        self.children: dict[str, str] = {}  # stage -> its MLflow run id
        self.stopping: str | None = None  # why no further stage starts (fail-fast)
        self.last_watch = 0.0
        self.driver_node = ray.get_runtime_context().get_node_id()

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        from mlflow.tracking import MlflowClient

        from components.tracking.runs import ensure_experiment, log_params, retrying

        uri = tracking_uri(self.cfg, self.store)
        self.client = MlflowClient(uri)
        artifact_root = self.store.default_artifact_root() if uri.startswith("sqlite:") else None
        self.experiment_id = retrying("create the experiment", lambda: ensure_experiment(
            self.client, self.cfg.tracking.experiment, artifact_root))
        parent = retrying("create the pipeline's MLflow run", lambda: self.client.create_run(
            self.experiment_id, run_name=f"{self.cfg.name}-{self.record['run_id']}",
            tags={"facerestore.pipeline_run": self.record["run_id"], "facerestore.config": self.cfg.name}))
        self.parent_id = parent.info.run_id
        retrying("log the pipeline's params", lambda: log_params(self.client, self.parent_id, self.record["config"]))
        self.record.update(mlflow_run_id=self.parent_id, tracking_uri=uri)
        self.save()
        try:
            while not self.schedule.done():
                self.start_ready()
                self.collect()
                self.watch()
        except BaseException:
            self.abandon("interrupted")
            self.end("interrupted", "KILLED")
            raise
        failed = bool(self.schedule.names(Status.FAILED))
        self.end("failed" if failed else "finished", "FAILED" if failed else "FINISHED")

    def start_ready(self) -> None:
        import ray

        if self.stopping:
            return
        now = time.time()
        ready = [n for n in self.schedule.ready() if self.not_before.get(n, 0.0) <= now]
        if not ready:
            return
        running = [self.requests[n] for n in self.schedule.running()]
        for name in admit(ready, self.requests, running, ray.cluster_resources(),
                          self.options["reserve_cpus"], self.options["max_parallel"]):
            if self.take_lease(name):
                self.launch(name)

    def collect(self) -> None:
        import ray

        if not self.tasks:
            time.sleep(TICK_S)
            return
        done, _ = ray.wait(list(self.tasks), num_returns=len(self.tasks), timeout=TICK_S)
        for ref in done:
            name = self.tasks.pop(ref)
            try:
                output = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - every stage error is recorded; the run goes on
                self.failed(name, self.stalled.pop(name, None), err)
            else:
                self.finished(name, output)

    def watch(self) -> None:
        """Every few seconds: nodes and stalls from the progress board, lease heartbeats, waiting stages."""
        import ray

        now = time.time()
        if now - self.last_watch < WATCH_EVERY_S:
            return
        self.last_watch = now
        try:
            board = ray.get(self.board.snapshot.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - a missed look is made up at the next one
            board = {}
        for ref, name in list(self.tasks.items()):
            info = self.info(name)
            fields = board.get(name, {})
            if fields.get("nodes"):
                info["nodes"] = list(fields["nodes"])
            last = max(info["attempts"][-1]["started_at"], fields.get("updated_at", 0.0))
            limit = self.cfg.stages[name].stall_timeout_s or self.options["stall_timeout_s"]
            if now - last > limit and name not in self.stalled:
                self.stalled[name] = f"no progress for {now - last:.0f} s (stall_timeout_s {limit:g})"
                ray.cancel(ref, force=True)
        self.renew_leases()
        self.save()

    # --- one stage ----------------------------------------------------------------------------

    def take_lease(self, name: str) -> bool:
        """True when this run may build the stage. A stage another run is building waits; once that
        run's manifest is complete (checked again after every lease taken, since the other run may
        have finished and released it) the output is used as cached."""
        if name in self.held:
            return True
        fingerprint, info = self.prints[name], self.info(name)
        ours, holder = self.leases.try_acquire(lease_uri(self.store.uri, name, fingerprint), self.record["run_id"])
        forced = self.entries[name].state is State.CACHED  # complete when planned: rebuilt on purpose
        manifest = None if forced else self.store.manifest(name, fingerprint)
        if manifest is not None and not self.store.damage(name, fingerprint):
            if ours is not None:
                self.leases.release(ours)
            info.update(state="cached", reasons=[f"built by pipeline run {manifest.get('pipeline_run_id')} while this run waited"],
                        **_cached_metrics_of(manifest))
            self.schedule.finish(name)
            self.save()
            return False
        if ours is not None:
            self.held[name] = ours
            info.pop("waiting_for", None)
            if ours.replaced:
                info["lease_taken_over_from"] = ours.replaced
            return True
        info.update(state="waiting", waiting_for=holder.owner, lease_expires_at=holder.expires_at)
        info.setdefault("waiting_since", time.time())
        # Look again at the watch's pace, not every tick: each look reads the lease and the manifest.
        self.not_before[name] = time.time() + WATCH_EVERY_S
        self.save()
        return False

    def launch(self, name: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        entry, info = self.entries[name], self.info(name)
        stage = entry.stage
        attempts = info.setdefault("attempts", [])
        first = not attempts
        if first:
            self.open_stage(name)
        # A forced stage starts from scratch once; a retry of it continues from its checkpoint.
        forced = first and entry.state is State.CACHED
        ctx = StageContext(
            pipeline_run_id=self.record["run_id"], stage=name, fingerprint=entry.fingerprint,
            output_uri=self.store.stage_uri(name, entry.fingerprint), store_uri=self.store.uri,
            tracking_uri=self.record["tracking_uri"], mlflow_run_id=self.children[name],
            mlflow_experiment_id=self.experiment_id, progress=_stage_progress(self.board, name), forced=forced)
        inputs = {need: self.store.artifact(need, self.prints[need]) for need in stage.needs}
        now = time.time()
        attempts.append({"attempt": len(attempts) + 1, "started_at": now, "finished_at": None, "error": None,
                         "retryable": False})
        info.update(state="running", started_at=info.get("started_at", now))
        info.pop("next_attempt_at", None)
        ref = run_stage.options(scheduling_strategy=NodeAffinitySchedulingStrategy(self.driver_node, soft=False)).remote(
            stage.kind, ctx, self.cfg.stages[name].config, inputs)
        self.tasks[ref] = name
        self.schedule.start(name)
        self.save()

    def open_stage(self, name: str) -> None:
        """The stage's MLflow run and `stage.json`, once per stage (its retries share them)."""
        from components.tracking.runs import log_params, retrying

        entry = self.entries[name]
        stage = entry.stage
        child = retrying(f"create the MLflow run of stage '{name}'", lambda: self.client.create_run(
            self.experiment_id, run_name=name, tags={
                "mlflow.parentRunId": self.parent_id, "facerestore.pipeline_run": self.record["run_id"],
                "facerestore.stage": name, "facerestore.fingerprint": entry.fingerprint}))
        self.children[name] = child.info.run_id
        self.info(name)["mlflow_run_id"] = child.info.run_id
        retrying(f"log the params of stage '{name}'",
                 lambda: log_params(self.client, child.info.run_id, {"kind": stage.kind, **stage.config}))
        # Damaged files and a forced stage's manifest go first, so a crash midway never looks complete.
        self.store.prepare_rebuild(name, entry.fingerprint)
        self.store.begin(name, {"fingerprint": entry.fingerprint, "config": stage.config, "kind": stage.kind,
                                "upstream": {n: self.prints[n] for n in stage.needs},
                                "code_version": stage.code_version, "pipeline_run_id": self.record["run_id"]})

    def finished(self, name: str, output: StageOutput) -> None:
        from components.tracking.runs import log_metrics, retrying

        entry, info, child = self.entries[name], self.info(name), self.children[name]
        stage = entry.stage
        artifact = self.store.finish(name, entry.fingerprint, {
            "stage": name, "kind": stage.kind, "fingerprint": entry.fingerprint,
            "code_version": stage.code_version, "config": stage.config,
            "upstream": {n: self.prints[n] for n in stage.needs}, "artifact": output.artifact, "count": output.count,
            "metrics": output.metrics, "details": output.details,
            "pipeline_run_id": self.record["run_id"], "mlflow_run_id": child})
        self.release_lease(name)
        now = time.time()
        info["attempts"][-1]["finished_at"] = now
        info.update(state="finished", finished_at=now, metrics=output.metrics, count=output.count,
                    duration_s=round(now - info["started_at"], 2))
        if output.details.get("nodes") and not info.get("nodes"):
            info["nodes"] = output.details["nodes"]
        self.schedule.finish(name)
        self.save()
        if output.metrics:
            retrying(f"log the metrics of stage '{name}'",
                     lambda: log_metrics(self.client, child, output.metrics, step=output.step))
        retrying(f"log the manifest of stage '{name}'", lambda: _log_manifest(self.client, child, artifact))
        retrying(f"end the MLflow run of stage '{name}'", lambda: self.client.set_terminated(child, status="FINISHED"))

    def failed(self, name: str, stalled: str | None, err: BaseException) -> None:
        from components.tracking.runs import retrying

        cause = StageStalled(stalled) if stalled else _unwrap(err)
        info = self.info(name)
        attempt = info["attempts"][-1]
        now = time.time()
        retryable = is_transient(cause)
        attempt.update(finished_at=now, error=f"{type(cause).__name__}: {cause}"[:2000], retryable=retryable)
        child = self.children[name]
        retrying(f"record attempt {attempt['attempt']} of stage '{name}'", lambda: self.client.set_tag(
            child, f"facerestore.attempt_{attempt['attempt']}.error", attempt["error"][:5000]))
        section = self.cfg.stages[name]
        if retryable and len(info["attempts"]) <= section.retries and not self.stopping:
            wait = section.retry_backoff_s * 2 ** (len(info["attempts"]) - 1)
            if stalled:
                wait = max(wait, RETRY_AFTER_CANCEL_S)
            self.not_before[name] = now + wait
            self.schedule.requeue(name)
            info.update(state="pending", next_attempt_at=now + wait)
            self.save()
            return
        interrupted = self.stopping is not None and _is_cancelled(err)
        info.update(state="interrupted" if interrupted else "failed", finished_at=now, error=attempt["error"],
                    traceback=_traceback(err)[-4000:], duration_s=round(now - info["started_at"], 2))
        self.release_lease(name)
        for blocked in self.schedule.fail(name):
            self.info(blocked).update(state="blocked", blocked_by=self.schedule.blocked_by[blocked])
        retrying(f"end the MLflow run of stage '{name}'", lambda: self.client.set_terminated(
            child, status="KILLED" if interrupted else "FAILED"))
        if self.options["fail_fast"] and not self.stopping:
            self.stopping = f"stage '{name}' failed and fail_fast is on"
            self.abandon("interrupted")
        self.save()

    # --- leases, stopping, the record -----------------------------------------------------------

    def renew_leases(self) -> None:
        for name, lease in list(self.held.items()):
            if time.time() < lease.heartbeat_at + self.options["lease_ttl_s"] / 4:
                continue
            try:
                self.held[name] = self.leases.renew(lease)
            except LeaseLost as lost:
                self.info(name)["lease_lost"] = str(lost)  # the other run builds the same output; ours still lands
                del self.held[name]
            except Exception as err:  # noqa: BLE001 - a store hiccup: the next heartbeat tries again
                self.info(name)["lease_error"] = f"{type(err).__name__}: {err}"

    def release_lease(self, name: str) -> None:
        lease = self.held.pop(name, None)
        if lease is not None:
            try:
                self.leases.release(lease)
            except Exception:  # noqa: BLE001 - an unreleased lease only expires
                pass

    def abandon(self, state: str) -> None:
        """Stops every running stage (fail-fast, Ctrl-C, a killed driver's last words); what has not
        started is blocked."""
        import ray

        for ref in list(self.tasks):
            ray.cancel(ref, force=True)
        if state == "interrupted" and self.stopping is None:
            self.stopping = "interrupted"
        now = time.time()
        for name in self.schedule.running():
            info = self.info(name)
            info.update(state=state, finished_at=now)
            if info.get("attempts"):
                info["attempts"][-1].update(finished_at=now, error=info["attempts"][-1]["error"] or "cancelled")
            self.release_lease(name)
        for name in self.schedule.names(Status.PENDING):
            self.info(name).update(state="blocked", blocked_by=[self.stopping])
        self.schedule.status.update({n: Status.FAILED for n in self.schedule.running()})
        self.schedule.status.update({n: Status.BLOCKED for n in self.schedule.names(Status.PENDING)})
        self.tasks.clear()

    def end(self, state: str, mlflow_status: str) -> None:
        from components.tracking.runs import retrying

        self.record.update(state=state, finished_at=time.time())
        self.save()
        try:
            from pipelines.timeline import timeline_png

            png = timeline_png(self.record)
            retrying("log timeline.png", lambda: _log_bytes(self.client, self.parent_id, "timeline.png", png))
        except Exception as err:  # noqa: BLE001 - the picture must never fail a run that finished
            self.record["timeline_error"] = f"{type(err).__name__}: {err}"
            self.save()
        retrying("end the pipeline's MLflow run", lambda: self.client.set_terminated(self.parent_id, status=mlflow_status))

    def info(self, name: str) -> dict[str, Any]:
        return self.record["stages"][name]

    def save(self) -> None:
        self.store.save_run(self.record)


def stage_resources(cfg: PipelineConfig, name: str) -> dict[str, float]:
    section = cfg.stages[name]
    return dict(stage_module(section.kind).resources(section.config))


def _run_stage(kind: str, ctx: StageContext, cfg: Any, inputs: dict[str, Artifact]) -> StageOutput:
    """The body of a stage's Ray task."""
    output = stage_module(kind).run(ctx, cfg, inputs)
    if "nodes" not in output.details:
        import ray

        # Work that ran in this task itself (evaluate, register): its node is the stage's.
        output.details["nodes"] = [ray.util.get_node_ip_address()]
    return output


def _remote_stage() -> Any:
    import ray

    # No CPUs of its own (the work it starts claims them), and no retries by Ray: the runner
    # decides about retries, by the kind of error.
    return ray.remote(num_cpus=0, max_retries=0)(_run_stage)


class _LazyRemote:
    """`ray.remote` wraps the function when first used, so importing the runner does not import Ray."""

    def __init__(self) -> None:
        self._remote: Any = None

    def options(self, **options: Any) -> Any:
        if self._remote is None:
            self._remote = _remote_stage()
        return self._remote.options(**options)


run_stage = _LazyRemote()


# Errors worth another attempt: the cluster or a service failed, not the stage's config or code.
TRANSIENT_NAMES = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
                   "ObjectLostError", "ObjectFetchTimedOutError", "OwnerDiedError", "ReferenceCountingAssertionError",
                   "RaySystemError", "GetTimeoutError", "OutOfMemoryError", "TaskUnschedulableError",
                   "ActorPlacementGroupRemoved", "StageStalled", "LeaseLost", "ConnectionError", "TimeoutError")
PERMANENT = (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, FileNotFoundError,
             PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(err: BaseException) -> bool:
    """Whether a stage error is a transient fault (lost node or worker, store or tracking-server
    trouble, a stall), which a retry may get past; config, validation and code errors are not.
    Ray Train wraps a worker's error: its cause chain decides."""
    from components.tracking.runs import causes, is_transient_tracking_error

    if is_transient_tracking_error(err):
        return True
    for link in causes(err):
        if {cls.__name__ for cls in type(link).__mro__} & set(TRANSIENT_NAMES):
            return True
        if isinstance(link, OSError) and not isinstance(link, PERMANENT):
            return True  # pyarrow's S3 and network errors are OSErrors
        if isinstance(link, PERMANENT):
            return False
    return False


def _unwrap(err: BaseException) -> BaseException:
    """The stage's own exception inside Ray's RayTaskError."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def _is_cancelled(err: BaseException) -> bool:
    return type(err).__name__ in ("TaskCancelledError", "WorkerCrashedError")


def _traceback(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


def _cached_metrics(store: Store, entry: PlanEntry) -> dict[str, Any]:
    """A cached stage's metrics, from its manifest, so a cached run's summary still shows them."""
    if entry.will_run or entry.state is not State.CACHED:
        return {}
    return _cached_metrics_of(store.manifest(entry.stage.name, entry.fingerprint) or {})


def _cached_metrics_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": manifest.get("metrics", {}), "mlflow_run_id": manifest.get("mlflow_run_id")}


def _progress_board() -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from components.progress import ProgressBoard

    # On the driver's node, as the stage tasks are. Left to Ray, a busy head sends it to another node;
    # if that node is lost, the runner loses every stage's progress and nodes, and takes the silence
    # for a stall (execution.stall_timeout_s).
    node = ray.get_runtime_context().get_node_id()
    return ProgressBoard.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()


def _stage_progress(board: Any, name: str) -> Any:
    from components.progress import StageProgress

    return StageProgress(board, name)


def _log_manifest(client: Any, run_id: str, artifact: Artifact) -> None:
    import json

    _log_bytes(client, run_id, "manifest.json",
               json.dumps(artifact.manifest, indent=2, sort_keys=True, default=str).encode())


def _log_bytes(client: Any, run_id: str, name: str, data: bytes) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_bytes(data)
        client.log_artifact(run_id, str(path))
