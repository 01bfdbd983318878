"""`facerestore export DIR --format onnx`: a restoring model as `model.onnx`, checked against PyTorch.

What is exported is the path `facerestore restore` runs: the method's `restore` on the batch its
task builds (`Task.inference_batch`), so an inpainting model keeps its known pixels, an SR model
upsamples, Panini runs its DRE and StyleGAN2 prior, fusion_inpaint its edge generator (Canny
included, its hysteresis an ONNX Loop). The graph's inputs are named after those batch keys
(`lq` [+ `mask`], or `lr`), its output `restored`; the batch axis is dynamic, the spatial axes
are the model's size (config.json `data.resolution`, over `sr_factor` for SR inputs): a model is
trained at one size. torch's TorchScript exporter writes it (`dynamo=False`, opset 17; the dynamo
exporter needs onnxscript, which the project does not ship).

The export checks itself before it writes anything: a seeded batch of 2 and one of 1 (neither
the batch the trace ran on; the batch of 1 proves the batch axis dynamic) go through PyTorch and
through ONNX Runtime's CPU provider, and with the outputs clamped to [0, 1] the largest absolute
difference must be at most 1e-3, and the graph may hold no random op. Otherwise ExportError says
which model, method and difference, and no model.onnx is written. On success model.onnx goes
beside model.safetensors (atomically, local folder or store URI), config.json gets an `onnx`
entry (opset, inputs, output, the measured difference, the batches checked, what is
deterministic), and MODEL_CARD.md, where the folder has one, its ONNX section from that entry.

The export runs on a copy of the networks, changed where torch.onnx needs it and the maths stays:
spectral norm folded into its weight (in eval mode every call computes that same weight; its
`vdot` has no ONNX op), and StyleGAN2's modulated convs in their shared-weight form
(`networks.stylegan2.shared_weight_convs`: a grouped conv's group count would fix the batch).
Panini's prior adds its stored noise images (`fixed_noise`), as `restore` does: no noise is drawn.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from components import storage
from components.models import load_method
from components.models.base import Method
from components.models.files import ONNX, read_model_config
from components.restore.model import ONNX_OUTPUT, OnnxRuntimeModel, Restorer, RestoreError, load_restorer

OPSET = 17
TOLERANCE = 1e-3  # largest |ONNX Runtime - PyTorch| allowed on the [0, 1] output
CHECK_SEED = 0
TRACE_BATCH = 2
CHECK_BATCHES = (2, 1)  # after the traced batch, from the same seeded generator; 1 proves the batch axis dynamic
BATCH_AXIS = "batch"
PROVIDER = "CPUExecutionProvider"
# Ops that draw random numbers: a graph holding one restores differently at each call
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})
NO_RANDOM_OP = "the graph holds no random op"
STORED_NOISE = ("StyleGAN2's noise inputs are the prior's stored noise images (fixed_noise), the ones restore "
                "uses: no noise is drawn at inference")


class ExportError(RuntimeError):
    """A model that cannot be exported, or whose export does not match PyTorch; nothing was written."""


@dataclass(frozen=True)
class OnnxExport:
    """What an export wrote: model.onnx's size, and the `onnx` entry it recorded in config.json."""

    directory: str
    method: str
    entry: dict[str, Any]
    file_bytes: int

    @property
    def max_abs_diff(self) -> float:
        return self.entry["max_abs_diff"]


def export_onnx(model_dir: str | Path) -> OnnxExport:
    """model.onnx of the restoring model in `model_dir` (a local folder or a store URI), checked
    against PyTorch, written beside its weights; ExportError (nothing written) when it cannot be."""
    directory = str(model_dir)
    try:
        restorer = load_restorer(directory, "cpu")
    except RestoreError as err:
        raise ExportError(f"cannot export {directory}: {err}") from None
    method: Method = restorer.model  # type: ignore[assignment]  # backend torch: the loaded Method
    graph, trace_warnings = trace(method, restorer, directory)
    check_deterministic(graph, directory, method)
    runtime = OnnxRuntimeModel(graph, method.name, method.task, "cpu")
    max_abs_diff = self_check(method, runtime, restorer, directory, trace_warnings)
    entry = {
        "file": ONNX, "opset": OPSET, "inputs": runtime.input_names, "output": ONNX_OUTPUT,
        "input_shapes": {name: [BATCH_AXIS, *shape] for name, shape in restorer.inputs.items()
                         if name in runtime.input_names},
        "max_abs_diff": max_abs_diff, "tolerance": TOLERANCE, "checked_batch_sizes": list(CHECK_BATCHES),
        "check_seed": CHECK_SEED, "checked_with": f"onnxruntime {_version('onnxruntime')} {PROVIDER}",
        "exporter": f"torch {_version('torch')} torch.onnx.export(dynamo=False)",
        "deterministic": deterministic_note(method),
    }
    storage.write_bytes_atomic(storage.join(directory, ONNX), graph)  # before config.json, which names it
    config_uri, config = read_model_config(directory)
    storage.write_json_atomic(config_uri, {**config, "onnx": entry})
    update_card(directory, entry)
    return OnnxExport(directory, method.name, entry, len(graph))


class RestoringPath(nn.Module):
    """`restore` of a copy of `method` as a module: the batch's tensors in positionally, in `names`
    order. The copy is rebuilt from the method's export, spectral norm folded into its weights.
    (Rebuilt, not deep-copied: a deep copy of a parametrized module shares its class with the
    original, and removing the parametrization from one would break the other.)"""

    def __init__(self, method: Method, names: list[str]):
        super().__init__()
        clone = load_method(*method.export())
        for network in clone.nets.values():
            fold_parametrizations(network).eval()
        self.method, self.names = clone, names
        self.networks = nn.ModuleDict(clone.nets)  # their parameters become the graph's initializers

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.method.restore(dict(zip(self.names, tensors, strict=True)))


def fold_parametrizations(network: nn.Module) -> nn.Module:
    """`network` with each parametrized tensor (spectral norm) replaced by the value it has now."""
    for module in list(network.modules()):
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return network


def trace(method: Method, restorer: Restorer, directory: str) -> tuple[bytes, list[str]]:
    """(model.onnx's bytes, the tracer's distinct warnings) of `method`'s restoring path."""
    from components.networks.stylegan2 import shared_weight_convs

    names = list(restorer.inputs)
    example = check_batch(restorer, TRACE_BATCH, torch.Generator().manual_seed(CHECK_SEED))
    module = RestoringPath(method, names)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught, \
            shared_weight_convs(module), torch.no_grad():
        warnings.simplefilter("always")  # collected, not shown: the self-check decides; a failed one quotes the tracer's
        path = Path(tmp, ONNX)
        try:
            torch.onnx.export(module, tuple(example[name] for name in names), str(path), dynamo=False,
                              opset_version=OPSET, input_names=names, output_names=[ONNX_OUTPUT],
                              dynamic_axes={name: {0: BATCH_AXIS} for name in [*names, ONNX_OUTPUT]})
        except Exception as err:  # an op with no ONNX form, a trace that breaks: the exporter's own words
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ExportError(f"cannot export {directory} ('{method.name}') to ONNX: torch.onnx.export raised "
                              f"{type(err).__name__}: {first_line}") from err
        others = sorted(p.name for p in Path(tmp).iterdir() if p.name != ONNX)
        if others:  # a graph over protobuf's 2 GB keeps its weights in files beside it
            raise ExportError(f"cannot export {directory} ('{method.name}'): its graph is over 2 GB and needs external "
                              f"data files ({', '.join(others[:3])}), which model directories do not carry yet")
        graph = path.read_bytes()
    tracer = [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    return graph, list(dict.fromkeys(tracer))


def check_batch(restorer: Restorer, n: int, generator: Any) -> dict[str, Any]:
    """A batch of `n` random crops at the model's input side (and block holes for a model with a
    mask input) from `generator`, as `restore` gets it (`Task.inference_batch`)."""
    side = restorer.input_side
    image = torch.rand(n, 3, side, side, generator=generator)
    holes = None
    if "mask" in restorer.inputs:
        coarse = (torch.rand(n, 1, max(1, side // 4), max(1, side // 4), generator=generator) > 0.7).float()
        holes = F.interpolate(coarse, size=(side, side), mode="nearest")
    return restorer.task.inference_batch(image, holes)


def check_deterministic(graph: bytes, directory: str, method: Method) -> None:
    """ExportError when the graph draws random numbers (in any sub-graph: a Loop's body too)."""
    import onnx

    def op_types(g: Any) -> set[str]:
        found = set()
        for node in g.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs
                for subgraph in subgraphs:
                    found |= op_types(subgraph)
        return found

    random = sorted(op_types(onnx.load_from_string(graph).graph) & RANDOM_OPS)
    if random:
        raise ExportError(f"the ONNX export of {directory} ('{method.name}') draws random numbers ({', '.join(random)}): "
                          "restore would differ at every call; model.onnx not written")


def self_check(method: Method, runtime: OnnxRuntimeModel, restorer: Restorer, directory: str,
               trace_warnings: list[str]) -> float:
    """The largest |ONNX Runtime - PyTorch| on the [0, 1] outputs of the check batches;
    ExportError when it is over TOLERANCE or ONNX Runtime cannot run a batch."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    check_batch(restorer, TRACE_BATCH, generator)  # the traced batch: the check uses the ones after it
    worst = 0.0
    for n in CHECK_BATCHES:
        batch = check_batch(restorer, n, generator)
        with torch.no_grad():
            expected = method.restore(batch).float().cpu().clamp(0, 1)
        try:
            actual = runtime.restore(batch).float().clamp(0, 1)
        except Exception as err:  # ONNX Runtime's own error: a fixed batch size, a shape the trace baked in
            raise ExportError(f"ONNX Runtime cannot run the export of {directory} ('{method.name}') on a batch of "
                              f"{n}: {type(err).__name__}: {str(err).strip()[:300]}; model.onnx not written") from None
        if actual.shape != expected.shape:
            raise ExportError(f"the ONNX export of {directory} ('{method.name}') gives {tuple(actual.shape)} on a batch "
                              f"of {n}, PyTorch {tuple(expected.shape)}; model.onnx not written")
        diff = (actual - expected).abs().max().item()
        worst = max(worst, diff if diff == diff else float("inf"))  # NaN counts as the worst difference
        if worst > TOLERANCE:
            hint = f" The trace warned: {'; '.join(trace_warnings[:3])}" if trace_warnings else ""
            raise ExportError(f"the ONNX export of {directory} ('{method.name}') differs from PyTorch by {worst:.3g} "
                              f"on a batch of {n} (outputs in [0, 1]; the bound is {TOLERANCE:g}): its graph does not "
                              f"compute what restore does; model.onnx not written.{hint}")
    return worst


def deterministic_note(method: Method) -> str:
    """What makes the exported path deterministic, for config.json and the model card."""
    from components.networks.stylegan2 import StyledConv

    if any(isinstance(module, StyledConv) for net in method.nets.values() for module in net.modules()):
        return f"{STORED_NOISE}; {NO_RANDOM_OP}"
    return NO_RANDOM_OP


def update_card(directory: str, entry: dict[str, Any]) -> None:
    """MODEL_CARD.md, where the folder has one, with its ONNX section made from `entry`."""
    from components.tracking.pull import CARD, with_onnx_section

    card = storage.join(directory, CARD)
    if storage.exists(card):
        storage.write_bytes_atomic(card, with_onnx_section(storage.read_bytes(card).decode(), entry).encode())


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)

