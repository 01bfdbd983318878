import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from components.models import METHODS, UnknownMethodError, build_method, load_method, method_class
from components.models.baseline import Baseline
from components.networks.inputs import fill_holes, model_input
from components.networks.unet import BaselineUNet
from tests.unit.method_checks import TINY_CONFIGS

TINY = TINY_CONFIGS["baseline"]


def make_batch(n=2, size=32, seed=0, noise=0.02):
    """Smooth targets (a 4x4 grid upsampled) with a square hole: a hole a network can learn to fill."""
    generator = torch.Generator().manual_seed(seed)
    hq = F.interpolate(torch.rand(n, 3, 4, 4, generator=generator), size=(size, size), mode="bilinear",
                       align_corners=False)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 4: size // 2, size // 4: size // 2] = 1.0
    lq = (hq + noise * torch.randn(hq.shape, generator=generator)).clamp(0, 1) * (1 - mask)
    return {"hq": hq, "lq": lq, "mask": mask}


@pytest.mark.parametrize("size", [32, 64])
def test_unet_maps_4_channels_to_3_at_the_input_size_and_backpropagates(size):
    net = BaselineUNet(width=8, depth=3)
    x = torch.rand(2, 4, size, size, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 3, size, size)
    out.mean().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_unet_rejects_a_size_not_divisible_by_2_to_the_depth():
    with pytest.raises(ValueError, match="divisible by 8"):
        BaselineUNet(width=8, depth=3)(torch.rand(1, 4, 36, 36))


def test_an_untrained_network_returns_the_hole_filled_input_exactly():
    batch = make_batch()
    with torch.no_grad():
        out = BaselineUNet(width=8, depth=2)(model_input(batch))
    assert torch.equal(out, fill_holes(batch["lq"], batch["mask"]))


def test_training_steps_give_every_parameter_a_gradient():
    method = build_method("baseline", TINY)
    metrics = method.training_step(make_batch(), step=1)
    assert set(metrics) == {"loss", "l1"} and all(isinstance(v, float) for v in metrics.values())
    # The zero-initialised output conv passes no gradient back on the first step; from the second on, all learn.
    method.training_step(make_batch(seed=1), step=2)
    for name, param in method.networks()["g"].named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_loss_falls_on_a_fixed_batch_within_60_steps():
    torch.manual_seed(0)
    method = build_method("baseline", {**TINY, "lr": 2e-3})
    batch = make_batch()
    losses = [method.training_step(batch, step)["loss"] for step in range(1, 61)]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5


def test_restore_is_the_clamped_network_output_without_compositing():
    torch.manual_seed(0)
    method = build_method("baseline", TINY)
    batch = make_batch()
    for step in (1, 2, 3):
        method.training_step(batch, step)
    restored = method.restore(batch)
    with torch.no_grad():
        expected = method.networks()["g"](model_input(batch)).clamp(0, 1)
    assert torch.equal(restored, expected)
    known = (batch["mask"] == 0).expand_as(restored)
    assert not torch.equal(restored[known], batch["lq"][known])


def test_export_records_the_whole_config_with_its_defaults():
    state, config = build_method("baseline", TINY).export()
    assert config == {"method": "baseline", "task": "restoration", "config": {"lr": 2e-4, "betas": [0.9, 0.99], **TINY}}
    assert all(key.startswith("g.") for key in state)


def test_load_method_rejects_a_state_missing_a_weight():
    state, config = build_method("baseline", TINY).export()
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_method(state, config)


def test_networks_are_reached_through_the_live_dict_so_a_wrapper_swapped_in_is_used():
    method = build_method("baseline", TINY)
    inner = method.networks()["g"]

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.module(x)

    wrapper = Wrapper(inner)
    method.networks()["g"] = wrapper
    method.training_step(make_batch(), step=1)
    assert wrapper.calls == 1


def test_baseline_is_a_restoration_method_reading_hq_lq_and_mask():
    assert method_class("baseline") is Baseline
    assert (Baseline.task, Baseline.inputs) == ("restoration", ("hq", "lq", "mask"))


def test_registry_names_the_unknown_method_and_lists_known_ones():
    with pytest.raises(UnknownMethodError) as info:
        method_class("nope")
    assert "nope" in str(info.value) and all(name in str(info.value) for name in METHODS)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, components.models; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
