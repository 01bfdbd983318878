import math

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from components.losses.adversarial import AdversarialLoss
from components.networks.patchgan import PatchDiscriminator
from tests.unit.method_checks import run_on_two_gloo_ranks


@pytest.mark.parametrize(("size", "logits_side"), [(32, 2), (64, 6)])
def test_logits_are_one_per_patch_at_an_eighth_of_the_size_minus_two(size, logits_side):
    logits, features = PatchDiscriminator(3, width=8)(torch.rand(2, 3, size, size))
    assert logits.shape == (2, 1, logits_side, logits_side)
    assert [f.shape[1] for f in features] == [8, 16, 32, 64, 1]
    assert features[-1] is logits


def test_it_returns_five_feature_maps_that_halve_three_times_then_shrink_by_one_twice():
    _, features = PatchDiscriminator(2, width=8)(torch.rand(1, 2, 64, 64))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 7, 6]


def test_an_input_too_small_for_one_patch_is_rejected_with_its_size():
    assert PatchDiscriminator(3, width=8)(torch.rand(1, 3, 24, 24))[0].shape[-2:] == (1, 1)
    with pytest.raises(ValueError, match=r"at least 24x24.*\(16, 16\)"):
        PatchDiscriminator(3, width=8)(torch.rand(1, 3, 16, 16))


def test_state_dict_survives_safetensors_and_reproduces_eval_logits():
    net = PatchDiscriminator(3, width=8)
    net(torch.rand(1, 3, 32, 32))  # one power iteration, so the saved vectors are not the initial ones
    net.eval()
    rebuilt = PatchDiscriminator(3, width=8)
    rebuilt.load_state_dict(load_safetensors(save_safetensors(dict(net.state_dict()))))
    rebuilt.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(net(x)[0], rebuilt(x)[0])


def test_every_conv_is_spectrally_normalised_and_has_no_bias():
    net = PatchDiscriminator(3, width=8)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    assert all(torch.nn.utils.parametrize.is_parametrized(c, "weight") and c.bias is None for c in convs)


def test_spectral_norm_bounds_the_largest_singular_value_of_each_weight_by_one():
    net = PatchDiscriminator(3, width=8)
    for _ in range(30):  # power iterations, one per training forward
        net(torch.rand(1, 3, 32, 32))
    for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)


def test_without_spectral_norm_convs_are_plain_and_have_biases():
    net = PatchDiscriminator(3, width=8, spectral_norm=False)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(not torch.nn.utils.parametrize.is_parametrized(c) and c.bias is not None for c in convs)


def test_paper_default_width_has_edgeconnects_parameter_count():
    # 64-128-256-512-1 widths, 4x4 kernels, no biases (src/networks.py Discriminator)
    expected = 16 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512 + 512 * 1)
    assert sum(p.numel() for p in PatchDiscriminator(3).parameters()) == expected == 2_763_776


def test_gradients_reach_the_input_and_every_parameter():
    net = PatchDiscriminator(3, width=8)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits, _ = net(x)
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_bf16_autocast_gives_finite_logits_and_loss():
    net = PatchDiscriminator(3, width=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = net(torch.rand(2, 3, 32, 32))
        loss = AdversarialLoss("nsgan")(logits, True)
    assert torch.isfinite(logits.float()).all() and torch.isfinite(loss)


def test_ddp_discriminator_survives_real_and_fake_forwards_before_each_backward_twice():
    result = run_on_two_gloo_ranks(_ddp_discriminator_steps)
    assert result["finite"], result
    assert result["trained"], "the optimiser steps left the weights unchanged"
    # DDP averaged the gradients, so both ranks hold the same weights and power-iteration vectors
    assert result["same_params"] and result["same_buffers"], result


def _ddp_discriminator_steps(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's
    d = DistributedDataParallel(PatchDiscriminator(3, width=8))
    initial = torch.cat([p.detach().flatten().clone() for p in d.parameters()])
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    adversarial = AdversarialLoss("nsgan")
    losses = []
    for _ in range(2):
        real, fake = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        real_logits, _ = d(real)
        fake_logits, _ = d(fake)
        loss = adversarial(real_logits, True) + adversarial(fake_logits, False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    params = torch.cat([p.detach().flatten() for p in d.parameters()])
    buffers = torch.cat([b.flatten() for b in d.module.buffers()])
    return {"finite": all(map(math.isfinite, losses)), "trained": not torch.equal(params, initial),
            "same_params": _equal_on_all_ranks(params, world), "same_buffers": _equal_on_all_ranks(buffers, world),
            "losses": losses}


def _equal_on_all_ranks(tensor: torch.Tensor, world: int) -> bool:
    import torch.distributed as dist

    gathered = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(gathered, tensor)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])
