"""Every recipe's `real` preset resolves, and each of its train stages builds its method against
weight files in the official layouts, then fits the data its synthesize stage writes.

The weight files the presets name under /weights are written here (random values, the official
key names and shapes: a rosinality config-F StyleGAN2 checkpoint, torchvision's VGG19), and an
upstream stage's model reaches the stage after it as a model directory, as the pipeline hands
it over (components/models/files.load_upstream). Each stage's method is built once, on CPU at
its full size (the 1024 px prior must hold values: Panini loads it from its export); the forward
that checks a method against the synthesized sizes runs on the meta device, shapes only.
Measured on the 2-core dev machine: about 15-25 s for the file, 2 GB peak memory.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from components.models import build_method
from components.models.files import save_model_dir
from components.tasks import task_of
from pipelines.config import load_config, read_yaml, resolved_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
WEIGHTS_ROOT = "/weights/"


def _raw(path: Path) -> dict[str, Any]:
    return read_yaml(path.read_text())


RECIPES = sorted(path for path in CONFIG_DIR.glob("*.yaml") if "real" in (_raw(path).get("presets") or {}))
# (recipe, train stage), from the YAML as written: collecting must not depend on the preset resolving.
TRAIN_STAGES = [(path.stem, name) for path in RECIPES for name, body in _raw(path)["stages"].items()
                if isinstance(body, dict) and body.get("kind", name) == "train"]


def real_config(recipe: str):
    return load_config(CONFIG_DIR / f"{recipe}.yaml", preset="real")


# -- the public files, written with the official key names and shapes ------------------------------
def stylegan2_generator_shapes(layout: str, size: int = 1024, style_dim: int = 512, n_mlp: int = 8,
                               channel_multiplier: int = 2) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ports' generator state dict, from their model code
    (rosinality model.py `Generator(size, style_dim, n_mlp)`; BasicSR stylegan2_arch.py
    `StyleGAN2Generator`): config F is (1024, 512, 8, channel_multiplier 2)."""
    ros = layout == "rosinality"
    channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
                256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    mlp, const, conv1, convs = ("style", "input.input", "conv1", "convs") if ros else \
        ("style_mlp", "constant_input.weight", "style_conv1", "style_convs")
    mod, noise_strength = ("conv", "noise.weight") if ros else ("modulated_conv", "weight")
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, n_mlp + 1):  # index 0 of the mapping Sequential is the parameter-free pixel norm
        shapes.update({f"{mlp}.{i}.weight": (style_dim, style_dim), f"{mlp}.{i}.bias": (style_dim,)})
    shapes[const] = (1, channels[4], 4, 4)

    def styled(prefix: str, c_in: int, c_out: int, upsample: bool) -> None:
        shapes.update({f"{prefix}.{mod}.weight": (1, c_out, c_in, 3, 3),
                       f"{prefix}.{mod}.modulation.weight": (c_in, style_dim),
                       f"{prefix}.{mod}.modulation.bias": (c_in,),
                       f"{prefix}.{noise_strength}": (1,), f"{prefix}.activate.bias": (c_out,)})
        if ros and upsample:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)

    def to_rgb(prefix: str, c_in: int, upsample: bool) -> None:
        shapes.update({f"{prefix}.{mod}.weight": (1, 3, c_in, 1, 1),
                       f"{prefix}.{mod}.modulation.weight": (c_in, style_dim),
                       f"{prefix}.{mod}.modulation.bias": (c_in,), f"{prefix}.bias": (1, 3, 1, 1)})
        if ros and upsample:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)

    styled(conv1, channels[4], channels[4], upsample=False)
    to_rgb("to_rgb1", channels[4], upsample=False)
    log_size = int(math.log2(size))
    c_in = channels[4]
    for i, res in enumerate(2**k for k in range(3, log_size + 1)):
        styled(f"{convs}.{2 * i}", c_in, channels[res], upsample=True)
        styled(f"{convs}.{2 * i + 1}", channels[res], channels[res], upsample=False)
        to_rgb(f"to_rgbs.{i}", channels[res], upsample=True)
        c_in = channels[res]
    for layer in range(2 * log_size - 3):
        side = 2 ** ((layer + 5) // 2)
        shapes[f"noises.noise_{layer}" if ros else f"noises.noise{layer}"] = (1, 1, side, side)
    return shapes


def write_stylegan2_checkpoint(path: Path, layout: str) -> dict[str, torch.Tensor]:
    """A config-F FFHQ checkpoint as the ports save it: rosinality convert_weight.py's
    {"g_ema": ..., "latent_avg": ...}, or BasicSR's {"params_ema": ...}; random values, the blur
    kernels rosinality stores as its make_kernel([1, 3, 3, 1]) x 4. Returns the generator state
    dict written."""
    torch.manual_seed(0)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = taps[:, None] * taps[None, :]
    kernel = kernel / kernel.sum() * 4
    state = {key: kernel.clone() if key.endswith("kernel") else torch.randn(shape)
             for key, shape in stylegan2_generator_shapes(layout).items()}
    checkpoint = {"g_ema": state, "latent_avg": torch.randn(512)} if layout == "rosinality" else {"params_ema": state}
    torch.save(checkpoint, path)
    return state


# torchvision vgg.py cfgs["E"] (VGG19, no batch norm): conv widths, "M" = max pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def write_vgg19_weights(path: Path) -> None:
    """torchvision's vgg19 state dict, `features.<i>.weight` / `.bias` (make_layers: conv, ReLU,
    pool, each one index); random values; the classifier (ignored by the loader) left out."""
    torch.manual_seed(0)
    state, index, c_in = {}, 0, 3
    for item in VGG19_CFG:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, c_in, 3, 3) * 0.01
        state[f"features.{index}.bias"] = torch.zeros(item)
        index, c_in = index + 2, item
    torch.save(state, path)


class Builds:
    """The weight files and upstream model directories of the module, each made once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[tuple[str, str], str] = {}
        self.checkpoints: dict[str, dict[str, torch.Tensor]] = {}
        self.model_dirs: dict[tuple[str, str], str] = {}

    def weights_file(self, key: str, public_path: str, method_config: dict[str, Any]) -> str:
        """A local file standing in for the public one the preset names under /weights."""
        kind = key if key != "pretrained" else f"stylegan2-{method_config.get('pretrained_layout', 'rosinality')}"
        if (kind, public_path) not in self.files:
            path = self.root / kind / Path(public_path).name
            path.parent.mkdir(parents=True, exist_ok=True)
            if key == "pretrained":
                layout = method_config.get("pretrained_layout", "rosinality")
                self.checkpoints[str(path)] = write_stylegan2_checkpoint(path, layout)
            elif key == "vgg_weights":
                write_vgg19_weights(path)
            else:
                pytest.fail(f"a real preset names {public_path} as `{key}`: this test does not know that file's "
                            "layout; teach `Builds.weights_file` to write it")
            self.files[(kind, public_path)] = str(path)
        return self.files[(kind, public_path)]

    def local_method_config(self, method_config: dict[str, Any]) -> dict[str, Any]:
        """The stage's method_config with each /weights path replaced by a file written here."""
        def replace(node: Any, key: str = "") -> Any:
            if isinstance(node, dict):
                return {k: replace(v, k) for k, v in node.items()}
            if isinstance(node, list):
                return [replace(v, key) for v in node]
            if isinstance(node, str) and node.startswith(WEIGHTS_ROOT):
                return self.weights_file(key, node, method_config)
            return node

        return replace(copy.deepcopy(method_config))

    def build(self, recipe: str, stage: str):
        """The stage's method as the train stage builds it, upstream model directories included."""
        cfg = real_config(recipe)
        section = cfg.stages[stage]
        upstream = {need: self.model_dir(recipe, need) for need in section.needs
                    if cfg.stages[need].kind == "train"}
        return build_method(section.config.method, self.local_method_config(section.config.method_config), upstream)

    def save(self, recipe: str, stage: str, method) -> str:
        directory = self.root / "models" / recipe / stage
        save_model_dir(str(directory), *method.export())
        self.model_dirs[(recipe, stage)] = str(directory)
        return str(directory)

    def model_dir(self, recipe: str, stage: str) -> str:
        """The upstream stage's exported model, built on first use (a test run alone builds it here)."""
        if (recipe, stage) not in self.model_dirs:
            self.save(recipe, stage, self.build(recipe, stage))
        return self.model_dirs[(recipe, stage)]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Builds:
    return Builds(tmp_path_factory.mktemp("real_presets"))


# Methods whose `restore` computes from values (fusion_inpaint: Canny edges of the known pixels,
# thresholds read with .item()), which the meta device does not hold: their forward runs on CPU.
RESTORE_READS_VALUES = frozenset({"fusion_inpaint"})


def is_upstream(recipe: str, stage: str) -> bool:
    cfg = real_config(recipe)
    return any(stage in section.needs for section in cfg.stages.values() if section.kind == "train")


def synthesized_shapes(recipe: str) -> tuple[int, int | None]:
    """(face size R, SR factor or None) of the recipe's synthesize stage under the preset."""
    synth = next(s.config for s in real_config(recipe).stages.values() if s.kind == "synthesize")
    return synth.resolution, synth.super_resolution.factor if synth.super_resolution else None


# -- the tests -----------------------------------------------------------------------------------
def test_the_recipes_with_a_real_preset_are_found():
    assert {path.stem for path in RECIPES} >= {"blind", "face_sr", "inpaint", "masked_face"}
    assert ("blind", "train_prior") in TRAIN_STAGES and ("blind", "train_panini_sr") in TRAIN_STAGES


@pytest.mark.parametrize("recipe", [path.stem for path in RECIPES])
def test_real_preset_resolves_and_names_weights_only_in_method_configs(recipe):
    cfg = real_config(recipe)
    assert any(section.kind == "train" for section in cfg.stages.values())
    resolved = resolved_config(cfg)

    def weight_paths(node: Any, where: str) -> list[str]:
        if isinstance(node, dict):
            return [p for k, v in node.items() for p in weight_paths(v, f"{where}.{k}")]
        if isinstance(node, list):
            return [p for v in node for p in weight_paths(v, where)]
        return [where] if isinstance(node, str) and node.startswith(WEIGHTS_ROOT) else []

    # every /weights path sits in a train stage's method_config, where the build test replaces it
    for where in weight_paths(resolved, "config"):
        assert where.startswith("config.stages.") and ".method_config." in where, where
        assert resolved["stages"][where.split(".")[2]]["kind"] == "train", where


@pytest.mark.parametrize(("recipe", "stage"), TRAIN_STAGES, ids=[f"{r}:{s}" for r, s in TRAIN_STAGES])
def test_real_preset_stage_builds_its_method_and_fits_its_data(builds, recipe, stage):
    method = builds.build(recipe, stage)
    if is_upstream(recipe, stage):  # the later stages get it as the pipeline hands it over
        builds.save(recipe, stage, method)
    resolution, factor = synthesized_shapes(recipe)
    task = task_of(method)
    if method.name == "stylegan2":
        pretrained = builds.local_method_config(real_config(recipe).stages[stage].config.method_config).get("pretrained")
        if pretrained is not None:  # the import read the file: g_ema holds its constant input
            written = builds.checkpoints[pretrained]
            const = written["input.input"] if "input.input" in written else written["constant_input.weight"]
            assert torch.equal(method.prior.const, const)
        # it trains on hq (and Panini restores at its size): the face size must be its resolution
        assert method.cfg.resolution == resolution
    if task.scoring is None or not task.restores_photos:
        return  # a DRE, a prior, an edge map: no image out to check against the data
    # One face at the synthesized sizes through `restore`: on the meta device (shapes only), or
    # on CPU for a restore whose ops read values.
    device = torch.device("cpu" if method.name in RESTORE_READS_VALUES else "meta")
    for name in list(method.nets):
        method.nets[name] = method.nets[name].to(device)
    generator = torch.Generator().manual_seed(0)

    def image(channels: int, side: int) -> torch.Tensor:
        return torch.rand(1, channels, side, side, generator=generator).to(device)

    data = {"hq": image(3, resolution), "lq": image(3, resolution), "edge": image(1, resolution).round(),
            "mask": (image(1, resolution) > 0.7).float()}
    if factor is not None:
        data["lr"] = image(3, resolution // factor)
    out = method.restore(task.scoring.method_batch(data))
    assert tuple(out.shape) == (1, 3, resolution, resolution)


def test_blind_real_preset_is_panini_nets_setting():
    """configs/panini_mfr.py, configs/panini_sr.py: FFHQ 1024 px targets, the 1024 px config-F
    prior, x16 SR from 64 px, batch 1 / 2 per GPU."""
    cfg = real_config("blind")
    resolution, factor = synthesized_shapes("blind")
    prior = cfg.stages["train_prior"].config.method_config
    assert resolution == 1024 and prior.get("resolution", 1024) == 1024 and resolution // factor == 64
    assert (cfg.stages["train_panini"].config.batch_size, cfg.stages["train_panini_sr"].config.batch_size) == (1, 2)
    # the perceptual term of both configs is on: it needs the VGG19 weights file
    for stage in ("train_panini", "train_panini_sr"):
        assert cfg.stages[stage].config.method_config["vgg_weights"].startswith(WEIGHTS_ROOT), stage


def test_a_config_f_checkpoint_refuses_a_512_px_prior_naming_the_keys(builds):
    path = builds.weights_file("pretrained", "/weights/stylegan2-ffhq-config-f.pt", {"pretrained_layout": "rosinality"})
    # On CPU: the import's blur-kernel check makes its reference kernel on the default device.
    with pytest.raises(ValueError, match=r"does not fit the config \(check resolution.*blocks\.8\.conv\.bias"):
        build_method("stylegan2", {"resolution": 512, "pretrained": path, "pretrained_layout": "rosinality"})
