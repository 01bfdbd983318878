import math

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from components.losses.perceptual import VGG19Features
from components.metrics.image_quality import psnr
from components.models import build_method
from components.models.edge_gan import EdgeGANConfig, predict_edges
from components.models.files import load_model_dir
from components.models.fusion_inpaint import FusionInpaint
from components.networks.fusion_inpaint import FusionGenerator
from components.networks.inputs import fill_holes
from tests.unit.method_checks import (
    TINY_CONFIGS,
    TINY_UPSTREAM,
    assert_loss_falls,
    face_batch,
    parameter_count,
    save_upstream,
)

TINY = TINY_CONFIGS["fusion_inpaint"]
TINY_EDGE = TINY_UPSTREAM["fusion_inpaint"]["train_edge"][1]
COLUMNS = ("hq", "lq", "mask", "edge")


@pytest.fixture(scope="module")
def edge_dir(tmp_path_factory):
    """A tiny stage-1 edge_gan model directory, as the edge stage hands it to this one."""
    return save_upstream("fusion_inpaint", tmp_path_factory.mktemp)["train_edge"]


@pytest.fixture(scope="module")
def random_vgg_file(tmp_path_factory):
    """A randomly initialised VGG19 saved as a weights file: the real `vgg_weights` path, no download."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg19_random.safetensors"
    save_file(VGG19Features(None).layers.state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def batch():
    return face_batch(n=4, size=32, columns=COLUMNS, seed=0)


def make(edge_dir, **overrides):
    torch.manual_seed(0)
    return build_method("fusion_inpaint", {**TINY, **overrides}, {"train_edge": edge_dir})


@pytest.mark.parametrize("size", [32, 64])
def test_generator_maps_image_edges_and_mask_to_rgb_at_the_input_size_and_backpropagates(size):
    net = FusionGenerator(width=8, residual_blocks=2, dense_layers=2, growth=8, attention_reduction=4)
    torch.nn.init.normal_(net.head[1].weight, 0.0, 0.02)  # as after a step: the zero init passes no gradient back
    image = torch.rand(2, 3, size, size, requires_grad=True)
    edges = torch.rand(2, 1, size, size, requires_grad=True)
    mask = torch.zeros(2, 1, size, size)
    mask[:, :, size // 4: size // 2, size // 4: size // 2] = 1
    out = net(image, edges, mask)
    assert out.shape == (2, 3, size, size)
    out.mean().backward()
    assert image.grad is not None and edges.grad is not None and edges.grad.abs().sum() > 0


def test_generator_keeps_known_pixels_ignores_what_lies_under_the_holes_and_starts_at_the_mean_fill(batch):
    torch.manual_seed(0)
    net = FusionGenerator(width=8, residual_blocks=1, dense_layers=2, growth=8, attention_reduction=4)
    image, mask, edges = batch["hq"], batch["mask"], batch["edge"]
    scribbled = torch.where(mask.bool(), torch.rand_like(image), image)
    with torch.no_grad():
        out, out_scribbled = net(image, edges, mask), net(scribbled, edges, mask)
    known = ~mask.bool().expand_as(out)
    assert torch.equal(out[known], image[known])
    assert torch.equal(out, out_scribbled)
    # The zero-initialised output conv: the untrained generator returns the mean-colour fill.
    torch.testing.assert_close(out, fill_holes(image, mask), atol=1e-5, rtol=0)


def test_generator_rejects_a_size_not_divisible_by_4():
    net = FusionGenerator(width=8, residual_blocks=1, dense_layers=1, growth=8)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 3, 34, 34), torch.rand(1, 1, 34, 34), torch.zeros(1, 1, 34, 34))


def test_default_config_is_edgeconnects_setting_and_its_parameter_count_is_printed():
    cfg = FusionInpaint.Config(edge={})
    assert (cfg.lr, cfg.betas, cfg.d_lr_ratio, cfg.gan_loss) == (1e-4, (0.0, 0.9), 0.1, "nsgan")
    assert (cfg.l1_weight, cfg.adversarial_weight, cfg.perceptual_weight, cfg.style_weight) == (1.0, 0.1, 0.1, 250.0)
    assert (cfg.width, cfg.residual_blocks, cfg.d_width, cfg.vgg_weights) == (64, 8, 64, None)
    counts = parameter_count(FusionInpaint(cfg))
    print(f"fusion_inpaint parameters at the paper defaults: {counts}")
    assert counts["g"] == 14_358_043
    assert counts["d"] == 2_763_776  # EdgeConnect's RGB PatchGAN at width 64
    assert 10_000_000 < counts["edge"] < 11_500_000  # EdgeConnect's edge generator, 10.8 M


def test_without_an_upstream_edge_model_or_edge_config_the_error_names_edge_gan():
    with pytest.raises(ValueError, match="upstream 'edge_gan'"):
        build_method("fusion_inpaint", TINY)


def test_an_invalid_edge_config_is_rejected_naming_the_key():
    with pytest.raises(ValidationError, match="edge"):
        build_method("fusion_inpaint", {**TINY, "edge": {"width": -1}})


def test_upstream_edge_generator_is_frozen_kept_as_a_network_and_its_config_recorded(edge_dir, batch):
    method = make(edge_dir)
    edge_net = method.networks()["edge"]
    assert not any(p.requires_grad for p in edge_net.parameters()) and not edge_net.training
    assert set(method.optimizers()) == {"g", "d"}
    assert method.cfg.edge == EdgeGANConfig(**TINY_EDGE).model_dump(mode="json")
    upstream_edge = load_model_dir(edge_dir)
    for key, value in upstream_edge.networks()["g"].state_dict().items():
        assert torch.equal(edge_net.state_dict()[key], value), key
    before = {k: v.clone() for k, v in edge_net.state_dict().items()}
    for step in (1, 2):
        method.training_step(dict(batch), step)
    assert all(torch.equal(before[k], v) for k, v in edge_net.state_dict().items())


def test_training_feeds_the_generator_the_edges_the_edge_model_predicts_not_the_ground_truth(edge_dir, batch):
    method = make(edge_dir)
    seen = {}
    method.networks()["g"].register_forward_pre_hook(lambda module, args: seen.update(edges=args[1].clone()))
    method.training_step(dict(batch), 1)
    with torch.no_grad():
        expected = predict_edges(method.networks()["edge"], batch["hq"], batch["mask"], batch["edge"])
    torch.testing.assert_close(seen["edges"], expected)
    holes = batch["mask"].bool()
    assert not torch.equal(seen["edges"][holes], batch["edge"][holes])
    assert torch.equal(seen["edges"][~holes], batch["edge"][~holes])


def test_a_training_step_logs_finite_losses_and_every_generator_parameter_learns(edge_dir, batch):
    method = make(edge_dir)
    generator = method.networks()["g"]
    first = method.training_step(dict(batch), 1)
    assert set(first) == {"loss", "l1", "adv_g", "d"}  # no VGG weights: no perceptual or style term
    assert all(isinstance(v, float) and math.isfinite(v) for v in first.values())
    # The zero-initialised output conv passes no gradient back on the first step; from the second on, all learn.
    method.training_step(dict(batch), 2)
    for name, param in generator.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_l1_falls_on_a_fixed_batch_while_the_adversarial_terms_stay_finite(edge_dir, batch):
    method = make(edge_dir, lr=1e-3)
    values = assert_loss_falls(method, batch, "l1", steps=40, factor=0.85)
    assert len(values) == 40
    last = method.training_step(dict(batch), 41)
    assert math.isfinite(last["adv_g"]) and math.isfinite(last["d"]) and last["d"] > 0


@pytest.mark.parametrize("term, weights", [
    ("perceptual", {"perceptual_weight": 0.1, "style_weight": 0.0}),
    ("style", {"perceptual_weight": 0.0, "style_weight": 250.0}),
])
def test_perceptual_and_style_terms_are_logged_and_each_alone_trains_the_generator_with_a_random_vgg(
        edge_dir, random_vgg_file, batch, term, weights):
    method = make(edge_dir, lr=1e-3, l1_weight=0.0, adversarial_weight=0.0, vgg_weights=random_vgg_file, **weights)
    small = {k: v[:2] for k, v in batch.items()}
    logs = [method.training_step(dict(small), step) for step in range(1, 16)]
    assert {"perceptual", "style"} <= set(logs[0])
    series = [v[term] for v in logs]
    assert all(math.isfinite(x) and x > 0 for x in series), series
    assert sum(series[-3:]) / 3 < 0.9 * sum(series[:3]) / 3, f"{term}: {series}"


def test_a_config_whose_generator_would_get_no_gradient_is_rejected():
    with pytest.raises(ValidationError, match="l1_weight"):
        FusionInpaint.Config(l1_weight=0.0, adversarial_weight=0.0)


def test_export_carries_the_edge_generator_and_its_config_so_it_rebuilds_with_no_upstream(edge_dir):
    state, config = make(edge_dir).export()
    assert {key.partition(".")[0] for key in state} == {"g", "d", "edge"}
    assert config["config"]["edge"] == EdgeGANConfig(**TINY_EDGE).model_dump(mode="json")


def test_short_cpu_training_beats_the_mean_colour_fill_inside_the_holes_on_held_out_faces(edge_dir):
    torch.manual_seed(0)
    method = make(edge_dir, lr=1e-3)
    train = face_batch(n=64, size=32, columns=("hq", "mask", "edge"), seed=0)
    test = face_batch(n=16, size=32, columns=("hq", "mask"), seed=1)
    order = torch.Generator().manual_seed(0)
    for step in range(1, 151):
        pick = torch.randperm(64, generator=order)[:8]
        method.training_step({key: value[pick] for key, value in train.items()}, step)
    restored = method.restore({"lq": test["hq"], "mask": test["mask"]})
    model_psnr = psnr(restored, test["hq"], mask=test["mask"]).nanmean().item()
    fill_psnr = psnr(fill_holes(test["hq"], test["mask"]), test["hq"], mask=test["mask"]).nanmean().item()
    print(f"PSNR in the holes: fusion_inpaint {model_psnr:.2f} dB, mean-colour fill {fill_psnr:.2f} dB")
    assert model_psnr > fill_psnr + 1.0
