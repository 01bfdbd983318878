"""The `facerestore` command. Heavy imports (Ray, torch, MLflow) happen inside commands so
that `facerestore --help` answers at once."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(help="Train and serve face restoration models as a Ray + MLflow pipeline.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def console() -> Console:
    """A console per command, so it sizes itself to the terminal (or COLUMNS) of that call."""
    return Console()


ConfigArg = Annotated[Path, typer.Argument(help="pipeline YAML, e.g. pipelines/configs/demo.yaml")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a key: stage.key=value (repeatable)")]
OnlyOpt = Annotated[Optional[str], typer.Option("--only", help="run just this stage; its upstream must exist")]
FromOpt = Annotated[Optional[str], typer.Option("--from", help="rerun this stage and everything downstream")]
ForceOpt = Annotated[Optional[list[str]], typer.Option("--force", help="rerun this stage (and downstream) even if cached")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="a named set of overrides from the config's `presets`")]
StoreOpt = Annotated[str, typer.Option("--store", help="pipeline store (folder or URI)")]


def _load(config: Path, overrides: list[str] | None, preset: str | None = None):
    import warnings

    from pipelines.config import ConfigDeprecation, ConfigError, load_config

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConfigDeprecation)
            cfg = load_config(config, overrides or [], preset=preset)
    except ConfigError as err:
        console().print(f"[bold red]config error[/] in {config}: {err}")
        raise typer.Exit(2) from None
    for warning in caught:
        if issubclass(warning.category, ConfigDeprecation):  # into the run's output (a job's log too)
            console().print(f"[yellow]deprecated:[/] {warning.message}", highlight=False)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return cfg


def _selection(only: str | None, start: str | None, force: list[str] | None):
    from pipelines.dag import Selection

    return Selection(only=only, start=start, force=tuple(force or ()))


@app.command()
def plan(config: ConfigArg, set_: SetOpt = None, only: OnlyOpt = None, from_: FromOpt = None,
         force: ForceOpt = None, preset: PresetOpt = None,
         verify: Annotated[bool, typer.Option(
             "--verify", help="also compare every output file's sha256 with its manifest (reads all of them)")] = False,
         ) -> None:
    """Show each stage as cached / stale (and why) / missing, and what `run` would execute."""
    from pipelines.dag import SelectionError
    from pipelines.display import plan_table
    from pipelines.runner import plan as make_plan

    cfg = _load(config, set_, preset)
    try:
        entries = make_plan(cfg, _selection(only, from_, force), verify=verify)
    except SelectionError as err:
        console().print(f"[bold red]cannot plan:[/] {err}")
        raise typer.Exit(2) from None
    console().print(plan_table(entries, cached_notes(cfg, entries, verify)))
    differs = [e.stage.name for e in entries if any("checksum differs" in r for r in e.reasons)]
    if differs:
        # `run` plans by sizes only, so it would call these cached; a forced run verifies before it reruns.
        console().print("`facerestore run` compares sizes only; to rebuild the damaged files: "
                        + "; ".join(f"`facerestore run {config} --only {name}`" for name in differs), highlight=False)


def cached_notes(cfg, entries, verified: bool = False) -> dict[str, str]:
    """What a cached output reports about itself: a synthesize stage's skipped images, whether its
    files were checked (a manifest written before file lists has none to check against); and for
    any stage, what the plan pinned an outside reference to (an init_from alias to its version)."""
    from pipelines.dag import State
    from pipelines.store import Store

    store, notes = Store(cfg.store), {}
    for entry in entries:
        pinned = entry.stage.config.get("init_from_resolved")
        if pinned and pinned != entry.stage.config.get("init_from"):
            notes[entry.stage.name] = f"init_from {entry.stage.config['init_from']} = {pinned}"
        if entry.state is State.CACHED:
            manifest = store.manifest(entry.stage.name, entry.fingerprint) or {}
            lines = []
            skipped = manifest.get("metrics", {}).get("skipped")
            if skipped:
                lines.append(f"{int(skipped)} source images skipped (see its manifest)")
            if "files" not in manifest:
                lines.append("files not checked: its manifest predates file lists")
            elif verified:
                count = len(manifest["files"])
                lines.append(f"{count} file{'' if count == 1 else 's'} verified (sha256)")
            if lines:
                notes[entry.stage.name] = "\n".join([*filter(None, [notes.get(entry.stage.name)]), *lines])
    return notes


@app.command()
def run(config: ConfigArg, set_: SetOpt = None, only: OnlyOpt = None, from_: FromOpt = None,
        force: ForceOpt = None, preset: PresetOpt = None,
        address: Annotated[Optional[str], typer.Option(help="Ray cluster address (else RAY_ADDRESS, else local)")] = None,
        run_id: Annotated[Optional[str], typer.Option(
            "--run-id", help="pipeline run id to use (`submit` passes the one it printed); must be new")] = None,
        max_parallel: Annotated[Optional[int], typer.Option(
            "--max-parallel", min=1, help="stages at once [default: execution.max_parallel, else what the cluster fits]; "
                                          "1 runs them one after another")] = None,
        fail_fast: Annotated[Optional[bool], typer.Option(
            "--fail-fast/--keep-going", help="stop every stage at the first failure [default: execution.fail_fast, "
                                             "else keep going: independent stages run to the end]")] = None,
        ) -> None:
    """Run the pipeline: every stage that is not cached, each as soon as its upstream stages are done."""
    from components.tracking.runs import TrackingRefused
    from pipelines.display import summary_table
    from pipelines.runner import RunFailed, Runner

    cfg = _load(config, set_, preset)
    if run_id is not None:
        _check_new_run_id(run_id, cfg.store)
    runner = Runner(cfg, _selection(only, from_, force), address=address, console=console(), run_id=run_id,
                    max_parallel=max_parallel, fail_fast=fail_fast)
    try:
        record = runner.run()
    except (ValueError, TrackingRefused) as err:  # a bad selection, an address `run` cannot join, a refused login
        console().print(f"[bold red]cannot run:[/] {err}")
        raise typer.Exit(2) from None
    except RunFailed as err:
        from pipelines.store import Store

        console().print(summary_table(Store(cfg.store).load_run(err.run_id)))
        console().print(f"[bold red]{err}[/]\nsee `facerestore status {err.run_id} --store {cfg.store}`; "
                        "rerunning runs the failed stages and what they blocked, the rest is cached")
        raise typer.Exit(1) from None
    console().print(summary_table(record))
    if all(s["state"] == "cached" for s in record["stages"].values()):
        console().print("every stage is cached: nothing ran")


def _check_new_run_id(run_id: str, store: str) -> None:
    """A given run id is well formed and not taken: a second run must not overwrite the first one's record."""
    from components import storage
    from pipelines.jobs import JobError, check_run_id
    from pipelines.store import Store

    try:
        check_run_id(run_id)
    except JobError as err:
        console().print(f"[bold red]--run-id:[/] {err}")
        raise typer.Exit(2) from None
    if storage.exists(Store(store).run_uri(run_id)):
        console().print(f"[bold red]--run-id:[/] pipeline run '{run_id}' already exists in store {Store(store).uri}")
        raise typer.Exit(2)


AddressOpt = Annotated[Optional[str], typer.Option(
    "--address", help="the head's job server, http://HEAD:8265 (else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS)")]


def _jobs(address: str | None):
    from pipelines.jobs import JobError, Jobs

    try:
        return Jobs(address)
    except JobError as err:
        console().print(f"[bold red]{err}[/]")
        raise typer.Exit(2) from None


@app.command()
def submit(config: ConfigArg, set_: SetOpt = None, only: OnlyOpt = None, from_: FromOpt = None,
           force: ForceOpt = None, preset: PresetOpt = None, address: AddressOpt = None,
           pip: Annotated[bool, typer.Option(
               "--pip/--no-pip", help="install pyproject.toml's requirements in the job (runtime_env pip; needs "
                                      "internet on the cluster); default: the cluster image's environment")] = False,
           env: Annotated[Optional[list[str]], typer.Option(
               "--env", help="NAME=VALUE in the job's environment (repeatable; shown in the dashboard, so no secrets)")] = None,
           working_dir: Annotated[Optional[Path], typer.Option(
               "--working-dir", help="directory uploaded as the job's working_dir, CONFIG inside it "
                                     "[default: this project checkout; none for an installed package]")] = None,
           check: Annotated[bool, typer.Option(
               "--check/--no-check", help="first run a short job that checks the cluster can run the pipeline: "
                                          "`facerestore` on the head's PATH, the same version as here")] = True,
           check_timeout: Annotated[Optional[float], typer.Option(
               "--check-timeout", min=1, help="seconds to wait for that check job "
                                              "(default 120; 900 with --pip, whose first install happens in it)")] = None,
           ) -> None:
    """Send the run to a Ray cluster as a Ray Job; print the job id and the pipeline run id, and return."""
    from pipelines.jobs import (CHECK_TIMEOUT_PIP_S, CHECK_TIMEOUT_S, JobError, RunOptions, build_submission,
                                checkout_version, default_working_dir, parse_env)
    from pipelines.runner import new_run_id

    cfg = _load(config, set_, preset)
    options = RunOptions(tuple(set_ or ()), preset, only, from_, tuple(force or ()))
    try:
        submission = build_submission(config, cfg.name, cfg.store, list(cfg.stages), options, new_run_id(),
                                      working_dir or default_working_dir(), pip=pip, env=parse_env(env or []))
    except JobError as err:
        console().print(f"[bold red]cannot submit:[/] {err}")
        raise typer.Exit(2) from None
    jobs = _jobs(address)
    try:
        if check:
            Console(stderr=True).print(f"checking that {jobs.address} can run facerestore {checkout_version()} "
                                       "(--no-check skips this)", highlight=False)
            jobs.check_head(submission, check_timeout or (CHECK_TIMEOUT_PIP_S if pip else CHECK_TIMEOUT_S))
        job_id = jobs.submit(submission)
    except JobError as err:
        console().print(f"[bold red]cannot submit:[/] {err}")
        raise typer.Exit(2) from None
    out = console()
    out.print(f"job id: {job_id}", highlight=False)
    out.print(f"pipeline run id: {submission.run_id}", highlight=False)
    out.print(f"follow: facerestore logs {job_id} --follow --address {jobs.address}\n"
              f"status: facerestore status {submission.run_id} --store {cfg.store}", highlight=False, soft_wrap=True)


@app.command()
def logs(job_id: Annotated[str, typer.Argument(help="Ray job id (printed by `submit`)")],
         follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends; exit 1 unless it succeeded")] = False,
         address: AddressOpt = None) -> None:
    """A submitted job's driver output (the pipeline's progress and summary)."""
    import sys

    from pipelines.jobs import JobError

    jobs = _jobs(address)
    try:
        if follow:
            state = jobs.follow(job_id, lambda chunk: (sys.stdout.write(chunk), sys.stdout.flush()))
        else:
            sys.stdout.write(jobs.logs(job_id))
            state = jobs.status(job_id)
    except JobError as err:
        console().print(f"[bold red]{err}[/]")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console().print(f"\nstopped following; job {job_id} goes on (`facerestore stop {job_id}` ends it)")
        raise typer.Exit(130) from None
    Console(stderr=True).print(f"job {job_id}: {state}", highlight=False)
    if follow and state != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
def stop(job_id: Annotated[str, typer.Argument(help="Ray job id (printed by `submit`)")],
         address: AddressOpt = None) -> None:
    """Stop a submitted job. Rerunning its config later resumes: finished stages stay cached."""
    from pipelines.jobs import JobError

    jobs = _jobs(address)
    try:
        stopped = jobs.stop(job_id)
        state = jobs.status(job_id)
    except JobError as err:
        console().print(f"[bold red]{err}[/]")
        raise typer.Exit(2) from None
    message = f"asked job {job_id} to stop" if stopped else f"job {job_id} had already ended"
    console().print(f"{message} (now {state})", highlight=False)


@app.command()
def runs(store: StoreOpt = ".facerestore",
         limit: Annotated[int, typer.Option(help="how many runs to list")] = 20) -> None:
    """List pipeline runs, newest first."""
    from pipelines.display import runs_table
    from pipelines.store import Store

    console().print(runs_table(Store(store).list_runs()[:limit]))


def _load_run(run_id: str, store: str) -> dict:
    """The run record, or exit 2 naming the run and the store."""
    from pipelines.store import Store

    try:
        return Store(store).load_run(run_id)
    except FileNotFoundError as err:
        console().print(f"[bold red]{err}[/]")
        raise typer.Exit(2) from None


@app.command()
def status(run_id: Annotated[str, typer.Argument(help="pipeline run id (from `facerestore runs`)")],
           store: StoreOpt = ".facerestore",
           timeline: Annotated[Optional[Path], typer.Option(
               "--timeline", help="also write the run's Gantt chart (a PNG, one bar per attempt) to this file")] = None,
           ) -> None:
    """Each stage of one run: state, start, end, duration, attempts, nodes, fingerprint, key metrics, MLflow run."""
    from pipelines.display import last_error, status_table

    record = _load_run(run_id, store)
    console().print(status_table(record))
    for name, info in record["stages"].items():
        error = info.get("error") or (last_error(info) if info["state"] in ("failed", "interrupted") else None)
        if error:
            console().print(f"[red]{name}: {error}[/]", highlight=False)
    if record.get("mlflow_run_id"):
        console().print(f"MLflow parent run {record['mlflow_run_id']} at {record.get('tracking_uri')}")
    if timeline is not None:
        from pipelines.timeline import timeline_png

        try:
            timeline.write_bytes(timeline_png(record))
        except OSError as err:
            console().print(f"[bold red]cannot write the timeline to {timeline}:[/] {err.strerror or err}")
            raise typer.Exit(2) from None
        console().print(f"timeline: {timeline}", highlight=False, soft_wrap=True)


@app.command()
def version() -> None:
    """The installed facerestore version (what `submit` checks the cluster runs too)."""
    from pipelines.jobs import installed_version

    found = installed_version()
    if found is None:
        console().print(f"[bold red]facerestore is not installed[/] in {sys.executable}'s environment "
                        f"(running from {Path(__file__).parent}): `pip install -e .` in the checkout")
        raise typer.Exit(1)
    typer.echo(f"facerestore {found}")


@app.command()
def report(run_id: Annotated[str, typer.Argument(help="pipeline run id (from `facerestore runs`)")],
           store: StoreOpt = ".facerestore") -> None:
    """The benchmark table of a run's evaluate stage(s): every method and baseline on one split."""
    from pipelines.display import report_tables
    from pipelines.store import Store

    record = _load_run(run_id, store)
    shown = 0
    for name, info in record["stages"].items():
        manifest = Store(store).manifest(name, info.get("fingerprint", "")) or {}
        if manifest.get("artifact") == "evaluation":
            details = manifest["details"]
            console().print(f"[bold]{name}[/]: {manifest['count']} '{details.get('split')}' samples")
            for table in report_tables(details):
                console().print(table)
            shown += 1
    if not shown:
        console().print(f"[bold red]run {run_id} has no finished evaluate stage[/]")
        raise typer.Exit(2)


TrackingOpt = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, else the store's SQLite file)")]


def _tracking_uri(tracking_uri: str | None, store: str) -> str:
    from pipelines.store import Store

    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or Store(store).default_tracking_uri()


FORMATS = ("onnx",)
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", help="also write the model as model.onnx (onnx, the one format for now), checked against PyTorch")]


@app.command()
def pull(reference: Annotated[str, typer.Argument(help="NAME (its champion), NAME@alias or NAME/version")],
         out: Annotated[Path, typer.Option("--out", help="folder to write the model into")],
         format_: FormatOpt = None, tracking_uri: TrackingOpt = None, store: StoreOpt = ".facerestore") -> None:
    """Write a registered model as model.safetensors + config.json + MODEL_CARD.md (no pickle needed);
    with --format onnx also model.onnx: the registered version's, else exported here and checked."""
    from components.export.onnx import ExportError

    _check_format(format_)
    uri = _tracking_uri(tracking_uri, store)
    try:
        pulled, onnx = _pull_model(reference, out, uri, format_)
    except (LookupError, ValueError, FileNotFoundError, ExportError) as err:
        console().print(f"[bold red]cannot pull:[/] {err}")
        raise typer.Exit(2) from None
    console().print(f"{pulled.name} version {pulled.version} ({', '.join(pulled.aliases) or 'no alias'}) -> {out}",
                    highlight=False, soft_wrap=True)
    if onnx is not None:
        _print_onnx(*onnx)


def _check_format(format_: str | None) -> None:
    if format_ is not None and format_ not in FORMATS:
        console().print(f"[bold red]--format {format_}:[/] the formats are {', '.join(FORMATS)}")
        raise typer.Exit(2)


def _pull_model(reference: str, out: Path, tracking_uri: str, format_: str | None):
    """(the pulled model, None or (its model.onnx entry, size, where it came from)): with format onnx,
    the model.onnx the registered version carries, else one exported here (ExportError if it cannot be)."""
    from components.export.onnx import export_onnx
    from components.models.files import ONNX, read_model_config
    from components.tracking.pull import pull as pull_model

    pulled = pull_model(reference, out, tracking_uri)
    if format_ is None:
        return pulled, None
    onnx_file = Path(out) / ONNX
    if onnx_file.exists():
        return pulled, (read_model_config(str(out))[1].get("onnx") or {}, onnx_file.stat().st_size, "carried by the version")
    exported = export_onnx(out)
    return pulled, (exported.entry, exported.file_bytes, "exported here")


def _print_onnx(entry: dict, size: int, source: str) -> None:
    checked = (f"max |ONNX Runtime - PyTorch| {entry['max_abs_diff']:.2g} on batches of "
               f"{' and '.join(map(str, entry['checked_batch_sizes']))}") if entry else "no check recorded"
    inputs = ", ".join(entry.get("inputs", [])) or "?"
    console().print(f"model.onnx ({source}): opset {entry.get('opset', '?')}, {inputs} -> {entry.get('output', '?')}, "
                    f"{checked}, {size / 1e6:.2f} MB", highlight=False, soft_wrap=True)


@app.command()
def export(model_dir: Annotated[str, typer.Argument(help="a model folder (model.safetensors + config.json), local or "
                                                    "a store URI")],
           format_: Annotated[str, typer.Option("--format", help="onnx: model.onnx, the one format for now")] = "onnx",
           ) -> None:
    """Write the model in another format beside its weights: model.onnx, written only when ONNX
    Runtime gives PyTorch's outputs (within 1e-3) on seeded batches of 2 and 1; recorded in config.json."""
    from components.export.onnx import ExportError, export_onnx

    _check_format(format_)
    try:
        exported = export_onnx(model_dir)
    except ExportError as err:
        console().print(f"[bold red]cannot export:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console().print(f"{exported.method} in {model_dir}:", highlight=False, soft_wrap=True)
    _print_onnx(exported.entry, exported.file_bytes, "written")


@app.command()
def restore(inputs: Annotated[list[str], typer.Argument(help="photos and folders of photos (local or s3://...)")],
            model: Annotated[str, typer.Option("--model", help="a pulled model folder, or models:/NAME@alias")],
            out: Annotated[str, typer.Option("--out", help="output folder (local or s3://...), GFPGAN's layout")],
            mask: Annotated[Optional[str], typer.Option("--mask", help="holes to fill (inpainting), in photo "
                                                        "coordinates: white = missing; one image for every photo, or a "
                                                        "folder with each photo's mask under its file stem")] = None,
            aligned: Annotated[bool, typer.Option("--aligned", help="the photos are aligned face crops: no detection")] = False,
            only_center_face: Annotated[bool, typer.Option("--only-center-face", help="restore the face nearest the "
                                                           "centre only")] = False,
            min_face: Annotated[int, typer.Option("--min-face", help="faces smaller than this (pixels) are left as they are")] = 24,
            batch_size: Annotated[int, typer.Option("--batch-size", help="faces per network pass")] = 8,
            device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when there is "
                                                          "one; bf16 on a GPU)")] = None,
            backend: Annotated[str, typer.Option("--backend", help="what runs the network: torch, or onnxruntime "
                                                 "(the model's model.onnx: `facerestore export`)")] = "torch",
            max_output_pixels: Annotated[int, typer.Option("--max-output-pixels", help="an SR model refuses a larger "
                                                           "output")] = 100_000_000,
            detector_weights: Annotated[Optional[str], typer.Option("--detector-weights", help="folder with MTCNN's "
                                                                    "pnet.pt, rnet.pt, onet.pt")] = None,
            address: Annotated[Optional[str], typer.Option(help="Ray cluster address: restore there (else RAY_ADDRESS; "
                                                           "an s3:// input also runs on Ray)")] = None,
            actors: Annotated[Optional[int], typer.Option("--actors", help="on Ray: loaded models at once (default: "
                                                          "a GPU each, else half the CPUs)")] = None,
            tracking_uri: TrackingOpt = None, store: StoreOpt = ".facerestore") -> None:
    """Restore photos: find each face, align it, restore it, paste it back. A file that cannot be
    restored is listed and the rest go on (exit 1 if any failed); restore_report.csv lists all."""
    import tempfile

    from components import storage
    from components.restore import RestoreError, RestoreOptions, restore_here, restore_on_cluster

    options = RestoreOptions(aligned=aligned, only_center_face=only_center_face, min_face=min_face,
                             batch_size=batch_size, max_output_pixels=max_output_pixels, detector_weights=detector_weights)
    address = address or os.environ.get("RAY_ADDRESS")
    on_cluster = bool(address) or not all(storage.is_local(uri) for uri in inputs)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model_dir = model
            if model.startswith("models:/"):
                onnx = "onnx" if backend == "onnxruntime" else None  # the version's model.onnx, else exported here
                model_dir = str(_pull_model(model, Path(tmp), _tracking_uri(tracking_uri, store), onnx)[0].directory)
            if mask is not None and not storage.exists(mask):
                raise RestoreError(f"mask {mask} does not exist")
            if on_cluster:
                _connect_for_restore(address)
                summary = restore_on_cluster(model_dir, inputs, out, options, mask, device, actors, backend=backend)
            else:
                summary = restore_here(model_dir, inputs, out, options, mask, device, backend=backend, on_row=_print_row)
        except (RestoreError, LookupError, ValueError, FileNotFoundError, RuntimeError) as err:
            console().print(f"[bold red]cannot restore:[/] {err}")
            raise typer.Exit(2) from None
    if on_cluster:
        for row in summary.rows:
            _print_row(row)
    faces = sum(row.faces for row in summary.rows)
    console().print(f"restored {summary.count('restored')} photo(s), {faces} face(s), into {out}"
                    + (f"; {summary.count('already restored')} already restored" if summary.count("already restored") else "")
                    + (f"; {summary.count('no face')} with no face (written unchanged)" if summary.count("no face") else "")
                    + (f"; {len(summary.failed)} could not be restored" if summary.failed else "")
                    + f"\nreport: {summary.report}", highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)


def _print_row(row) -> None:
    if row.status in ("failed", "missing"):
        console().print(f"[red]skipped {row.input}:[/] {row.reason}", highlight=False, soft_wrap=True)
    elif row.reason:
        console().print(f"{row.input}: {row.status}; {row.reason}", highlight=False, soft_wrap=True)


def _connect_for_restore(address: str | None) -> None:
    """Join the cluster at `address`, or start a local Ray for a store input."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=os.environ.get("FACERESTORE_RAY_LOGS") == "1", include_dashboard=False)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False


data_app = typer.Typer(help="Look at datasets: shards written by a synthesize stage.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    path: Annotated[str, typer.Argument(help="a synthesize output folder, a folder of shards, or one .parquet")],
    sheet: Annotated[str, typer.Option(help="contact sheet PNG to write (the store is left untouched)")]
    = "contact_sheet.png",
    samples: Annotated[int, typer.Option(help="random samples on the contact sheet")] = 8,
    seed: Annotated[int, typer.Option(help="which random samples")] = 0,
) -> None:
    """Counts per split, skipped inputs, parameter histograms, and a contact sheet (HQ | LQ | mask | edge)."""
    from components.data.inspect import inspect_dataset, render_report

    try:
        report = inspect_dataset(path, sheet, samples=samples, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        console().print(f"[bold red]{err}[/]")
        raise typer.Exit(2) from None
    for renderable in render_report(report):
        console().print(renderable)


@app.command()
def score(pred_dir: Annotated[str, typer.Argument(help="folder of restored images (local or s3://...)")],
          target_dir: Annotated[str, typer.Argument(help="folder of their targets, matched by file name "
                                                    "without its extension (a.png matches a.jpg)")],
          protocol: Annotated[str, typer.Option("--protocol", help="project, ctcnet, edgeconnect or panini "
                                                "(docs/methods.md, \"Scoring protocols\")")],
          mask_dir: Annotated[Optional[str], typer.Option("--mask-dir", help="holes (white = missing) named as the "
                                                          "targets: the project protocol's in-hole metrics")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="print the figures and problems as JSON")] = False,
          ) -> None:
    """Score two folders of images under a paper's protocol or the project's: the mean and each
    image's values. Unmatched names, size mismatches and unreadable files are listed, never
    scored; exit 1 when nothing could be scored."""
    import json

    from components.metrics.folders import score_folders
    from pipelines.display import folder_scores_table

    try:
        result = score_folders(pred_dir, target_dir, protocol, mask_dir)
    except (FileNotFoundError, ValueError) as err:
        console().print(f"[bold red]cannot score:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
    else:
        out = console()
        for note in result.notes:
            out.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        if result.images:
            out.print(folder_scores_table(result))
        for problem in result.problems:
            out.print(f"[red]not scored {problem.name}:[/] {problem.reason}", highlight=False, soft_wrap=True)
        out.print(f"scored {len(result.images)} image pair(s) of {pred_dir} against {target_dir} under the "
                  f"{result.protocol} protocol" + (f"; {len(result.problems)} not scored" if result.problems else ""),
                  highlight=False, soft_wrap=True)
    if not result.images:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
