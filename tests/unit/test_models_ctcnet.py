import pytest
import torch
from pydantic import ValidationError

from components.metrics.image_quality import psnr
from components.models import build_method, method_class
from components.models.ctcnet import CTCNet
from components.networks.classical import bicubic
from components.networks.ctcnet import FRM, LGCM, MFFU, CTCNetGenerator, TransformerBlock
from tests.unit.method_checks import TINY_CONFIGS, assert_loss_falls, face_batch, parameter_count

# Narrow copy for CPU tests: widths 8 / 16 / 32, one Transformer block per LGCM, one FRM.
TINY = TINY_CONFIGS["ctcnet"]
# What the official IVIPLab/CTCNet `CTCNet()` reaches in its forward pass at 128 px (its module
# also builds 1,997,218 parameters it never calls; see components/networks/ctcnet.py).
OFFICIAL_FORWARD_PARAMETERS = 22_407_699


def sr_batch(n=4, size=32, factor=4, seed=0):
    return face_batch(n=n, size=size, columns=("hq", "lr"), seed=seed, super_resolution={"factor": factor})


def tiny_generator(scale):
    return CTCNetGenerator(scale=scale, width=8, encoder_blocks=(1, 1, 1), refinement_blocks=1, fsau_depth=2,
                           frm_fsau_depth=1)


@pytest.mark.parametrize("scale", [4, 8, 16])
def test_generator_maps_an_8px_face_to_scale_times_larger_and_backpropagates(scale):
    torch.manual_seed(0)
    net = tiny_generator(scale)
    torch.nn.init.normal_(net.tail.weight, 0.0, 0.02)  # a trained-like tail, so gradients reach the input
    lr = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = net(lr)
    assert out.shape == (2, 3, 8 * scale, 8 * scale)
    out.mean().backward()
    assert lr.grad is not None and lr.grad.shape == lr.shape and lr.grad.abs().sum() > 0


def test_untrained_generator_returns_the_bicubic_upsampling_exactly():
    lr = sr_batch()["lr"]
    with torch.no_grad():
        out = tiny_generator(4)(lr)
    assert torch.equal(out, bicubic(lr, 4))


def test_generator_rejects_an_hr_size_that_is_not_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_generator(4)(torch.rand(1, 3, 5, 5))


def test_training_rejects_hq_that_is_not_lr_times_scale_and_names_both_sizes():
    method = build_method("ctcnet", TINY)
    wrong = {"hq": sr_batch()["hq"], "lr": torch.rand(4, 3, 16, 16)}  # 32 px hq, but 16 x 4 = 64
    with pytest.raises(ValueError) as info:
        method.training_step(wrong, 1)
    message = str(info.value)
    assert "16x16" in message and "32x32" in message and "64x64" in message and "scale 4" in message


@pytest.mark.parametrize("override, key", [
    ({"heads": [1, 3, 4]}, "heads"),
    ({"width": 7}, "width"),
    ({"scale": 3}, "scale"),
    ({"encoder_blocks": [1, 0, 1]}, "encoder_blocks"),
    ({"refinement_blocks": 0}, "refinement_blocks"),
])
def test_config_rejects_impossible_values_naming_the_key(override, key):
    with pytest.raises(ValidationError, match=key):
        CTCNet.Config.model_validate({**TINY, **override})


def test_paper_default_matches_the_official_networks_forward_parameter_count_and_layout():
    method = build_method("ctcnet", {})
    count = parameter_count(method)["g"]
    print(f"ctcnet paper-default parameters: {count:,}")
    assert count == OFFICIAL_FORWARD_PARAMETERS
    net = method.networks()["g"]
    assert method.cfg.scale == 8 and net.scale == 8
    assert sum(isinstance(m, LGCM) for m in net.modules()) == 6  # three encoder + three decoder levels
    assert sum(isinstance(m, TransformerBlock) for m in net.modules()) == 2 * (4 + 6 + 6)
    assert sum(isinstance(m, FRM) for m in net.modules()) == 4
    assert [m.fuse.in_channels for m in net.modules() if isinstance(m, MFFU)] == [256, 288, 352]


def test_every_parameter_gets_a_gradient_from_the_second_step_on():
    torch.manual_seed(0)
    method = build_method("ctcnet", TINY)
    batch = sr_batch()
    # The zero-initialised tail passes no gradient back on the first step; from the second on, all learn.
    for step in (1, 2):
        metrics = method.training_step(batch, step)
    assert set(metrics) == {"loss", "l1"} and all(isinstance(v, float) for v in metrics.values())
    parameters = dict(method.networks()["g"].named_parameters())
    assert all(param.grad is not None for param in parameters.values())  # DDP would wait for a missing one
    silent = {name for name, param in parameters.items() if param.grad.abs().sum() == 0}
    # Only a channel attention's squeeze / excite convs may get a zero gradient: at tiny widths
    # they have one hidden ReLU unit, which can be off for every image of a batch.
    assert all(".attention.weights." in name for name in silent), sorted(silent)
    assert len(silent) < 0.1 * len(parameters)


def test_l1_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    method = build_method("ctcnet", {**TINY, "lr": 2e-3})
    assert_loss_falls(method, sr_batch(), "l1", steps=40, factor=0.85)


def test_once_trained_restore_is_no_longer_the_bicubic_upsampling():
    torch.manual_seed(0)
    method = build_method("ctcnet", {**TINY, "lr": 2e-3})
    batch = sr_batch()
    for step in (1, 2, 3):
        method.training_step(batch, step)
    assert not torch.equal(method.restore({"lr": batch["lr"]}), bicubic(batch["lr"], 4))  # the trained tail acts


def test_short_cpu_training_beats_bicubic_upsampling_on_held_out_faces():
    torch.manual_seed(0)
    method = build_method("ctcnet", {**TINY, "lr": 2e-3})
    train, held_out = sr_batch(n=32, seed=0), sr_batch(n=8, seed=1)
    order = torch.Generator().manual_seed(0)
    for step in range(1, 101):
        picked = torch.randperm(32, generator=order)[:8]
        method.training_step({key: value[picked] for key, value in train.items()}, step)
    ours = psnr(method.restore(held_out), held_out["hq"]).mean().item()
    baseline = psnr(bicubic(held_out["lr"], 4), held_out["hq"]).mean().item()
    print(f"held-out PSNR: ctcnet {ours:.2f} dB, bicubic {baseline:.2f} dB")
    assert ours > baseline + 0.3


def test_ctcnet_is_a_super_resolution_method_reading_hq_and_lr():
    assert method_class("ctcnet") is CTCNet
    assert CTCNet.task == "super_resolution" and CTCNet.inputs == ("hq", "lr")
