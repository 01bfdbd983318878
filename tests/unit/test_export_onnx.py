"""ONNX export (components/export/onnx.py): every restoring method exports at test size and ONNX
Runtime gives PyTorch's outputs on real faces in batches of 2 and 1; an export that cannot match
fails loudly and writes nothing; `facerestore export` prints what it wrote."""

import json

import numpy as np
import onnxruntime
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from components.export.onnx import OPSET, TOLERANCE, ExportError, export_onnx
from components.models import METHODS, build_method, load_method
from components.models.base import Method, MethodConfig
from components.models.files import ONNX, read_model_dir, save_model_dir
from components.tasks import task_of
from pipelines.cli import app
from tests.unit.method_checks import TINY_CONFIGS, face_batch, save_upstream

SIZE = 32
# case -> (method, config overrides, upstream stages kept, sr_factor): every restoring method, and
# Panini for both of its tasks (blind restoration from lq; SR from lr with a learned vector, no DRE)
CASES = {
    "baseline": ("baseline", {}, None, None),
    "fusion_inpaint": ("fusion_inpaint", {}, None, None),
    "cafin": ("cafin", {}, None, None),
    "contrastive_inpaint": ("contrastive_inpaint", {}, None, None),
    "ctcnet": ("ctcnet", {}, None, 4),
    "panini": ("panini", {}, None, None),
    "panini_sr": ("panini", {"input": "lr"}, ("train_prior",), 4),
}


def save_case(case, directory, make_dir):
    name, overrides, kept, sr_factor = CASES[case]
    upstream = save_upstream(name, make_dir)
    if kept is not None:
        upstream = {stage: uri for stage, uri in upstream.items() if stage in kept}
    torch.manual_seed(0)
    method = build_method(name, {**TINY_CONFIGS[name], **overrides}, upstream)
    state, config = method.export()
    save_model_dir(str(directory), state, {**config, "data": {"resolution": SIZE, "sr_factor": sr_factor}})
    return directory


def real_batch(method, n, sr_factor):
    """`n` synthesized faces (not the export's random check batches) as restore feeds them."""
    task = task_of(method)
    faces = face_batch(n=n, size=SIZE, seed=7, columns=("hq", "mask", "lr") if sr_factor else ("hq", "mask"),
                       **({"super_resolution": {"factor": sr_factor}} if sr_factor else {}))
    image = faces["lr"] if task.scales else faces["hq"]
    return task.inference_batch(image, faces["mask"] if task.mask != "none" else None)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_restoring_method_exports_and_onnx_runtime_matches_pytorch_on_batches_of_2_and_1(case, tmp_path_factory):
    directory = save_case(case, tmp_path_factory.mktemp(case), lambda stage: tmp_path_factory.mktemp(f"{case}-{stage}"))
    exported = export_onnx(str(directory))
    method = load_method(*read_model_dir(str(directory)))
    entry = json.loads((directory / "config.json").read_text())["onnx"]
    assert entry == exported.entry and entry["opset"] == OPSET and entry["output"] == "restored"
    assert entry["max_abs_diff"] < TOLERANCE and entry["checked_batch_sizes"] == [2, 1]
    assert exported.file_bytes == (directory / ONNX).stat().st_size > 0
    session = onnxruntime.InferenceSession(str(directory / ONNX), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == entry["inputs"]
    assert all(i.shape[0] == "batch" for i in [*session.get_inputs(), *session.get_outputs()])  # the dynamic axis
    for n in (2, 1):
        batch = real_batch(method, n, CASES[case][3])
        expected = method.restore(batch).clamp(0, 1).numpy()
        (actual,) = session.run(["restored"], {name: batch[name].numpy() for name in entry["inputs"]})
        assert actual.shape == expected.shape and np.abs(np.clip(actual, 0, 1) - expected).max() < TOLERANCE, (case, n)
    if CASES[case][0] == "panini":  # the prior's noise: the stored images, said so in config.json
        assert "fixed_noise" in entry["deterministic"]


# -- exports that cannot match -----------------------------------------------------------------
class Threshold(nn.Module):
    """Each pixel above the batch's mean brightness, as a Python number: a trace keeps the traced
    batch's mean as a constant, so the graph thresholds every later batch at the wrong level."""

    def forward(self, image: Tensor) -> Tensor:
        threshold = float(image.mean())
        return (image > threshold).float()


class Noisy(nn.Module):
    """The image plus fresh noise at every call: no graph can match it."""

    def forward(self, image: Tensor) -> Tensor:
        return image + 0.5 * torch.rand_like(image)


class BrokenMethod(Method):
    """A restoration method whose one network is `Threshold` or `Noisy` (its config's `network`)."""

    name = "broken"
    inputs = ("hq", "lq")

    class Config(MethodConfig):
        network: str = "threshold"

    def build_networks(self) -> dict[str, nn.Module]:
        return {"g": {"threshold": Threshold, "noisy": Noisy}[self.cfg.network]()}

    def build_optimizers(self):
        return {}

    def training_step(self, batch, step):
        return {}

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        return self.nets["g"](batch["lq"])


@pytest.fixture
def broken_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "broken", f"{__name__}:BrokenMethod")

    def save(network):
        directory = tmp_path / network
        state, config = BrokenMethod(BrokenMethod.Config(network=network)).export()
        save_model_dir(str(directory), state, {**config, "data": {"resolution": SIZE}})
        return directory

    return save


def test_an_export_whose_graph_computes_something_else_fails_naming_the_model_and_the_difference(broken_dir):
    directory = broken_dir("threshold")
    config_before = (directory / "config.json").read_text()
    with pytest.raises(ExportError, match=r"differs from PyTorch by 1 on a batch of 2") as raised:
        export_onnx(str(directory))
    assert str(directory) in str(raised.value) and "'broken'" in str(raised.value)
    assert "model.onnx not written" in str(raised.value)
    assert not (directory / ONNX).exists() and (directory / "config.json").read_text() == config_before


def test_an_export_that_draws_random_numbers_is_refused(broken_dir):
    directory = broken_dir("noisy")
    with pytest.raises(ExportError, match=r"draws random numbers \(RandomUniformLike\)"):
        export_onnx(str(directory))
    assert not (directory / ONNX).exists()


def test_a_model_that_restores_no_photo_is_not_exported(tmp_path):
    state, config = build_method("edge_gan", TINY_CONFIGS["edge_gan"]).export()
    save_model_dir(str(tmp_path), state, {**config, "data": {"resolution": SIZE}})
    with pytest.raises(ExportError, match="does not restore photos"):
        export_onnx(str(tmp_path))


# -- the command ---------------------------------------------------------------------------------
def test_the_export_command_writes_model_onnx_and_prints_what_it_checked(tmp_path):
    directory = save_case("baseline", tmp_path / "model", lambda stage: tmp_path / stage)
    (directory / "MODEL_CARD.md").write_text("# a card\n\n## Use\n\nrestore it\n")
    result = CliRunner().invoke(app, ["export", str(directory), "--format", "onnx"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and "opset 17" in result.output and "batches of 2 and 1" in result.output
    assert (directory / ONNX).exists()
    card = (directory / "MODEL_CARD.md").read_text()
    assert card.startswith("# a card") and "## ONNX" in card and "largest absolute difference" in card
    again = CliRunner().invoke(app, ["export", str(directory)])  # a second export replaces the card's section
    assert again.exit_code == 0 and (directory / "MODEL_CARD.md").read_text().count("## ONNX") == 1
    other = CliRunner().invoke(app, ["export", str(directory), "--format", "tflite"])
    assert other.exit_code == 2 and "the formats are onnx" in other.output
