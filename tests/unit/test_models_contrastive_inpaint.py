import copy
import math

import pytest
import torch
from pydantic import ValidationError

from components.metrics.image_quality import psnr
from components.models import build_method, method_class
from components.networks.contrastive_inpaint import AttentionResnetGenerator, FeatureAttention
from components.networks.inputs import fill_holes, model_input
from tests.unit.method_checks import TINY_CONFIGS, face_batch, mean, parameter_count

TINY = TINY_CONFIGS["contrastive_inpaint"]
CUT_RESNET_9BLOCKS_PARAMETERS = 11_378_179  # CUT/CycleGAN resnet_9blocks, ngf 64, RGB in and out


def unpaired_batch(n=4, size=32, seed=0, unpaired_seed=100):
    """Masked training faces plus `unpaired_hq`: other faces, as the training loop's second stream gives them."""
    batch = face_batch(n=n, size=size, columns=("hq", "lq", "mask"), seed=seed)
    batch["unpaired_hq"] = face_batch(n=n, size=size, columns=("hq",), seed=unpaired_seed)["hq"]
    return batch


def tiny_method(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_method("contrastive_inpaint", {**TINY, **overrides})


@pytest.mark.parametrize("size", [32, 64])
def test_generator_maps_masked_face_and_mask_to_rgb_at_the_input_size_and_backpropagates(size):
    net = AttentionResnetGenerator(width=8, n_blocks=2)
    torch.nn.init.normal_(net.decoder[-1].weight, std=0.01)  # the zero-initialised head passes no gradient
    x = torch.rand(2, 4, size, size, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 3, size, size)
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_generator_rejects_a_size_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        AttentionResnetGenerator(width=8, n_blocks=2)(torch.rand(1, 4, 34, 34))


def test_untrained_generator_returns_the_hole_filled_input_exactly():
    batch = unpaired_batch()
    x = model_input({"lq": batch["hq"] * (1 - batch["mask"]), "mask": batch["mask"]})
    with torch.no_grad():
        out = AttentionResnetGenerator(width=8, n_blocks=2)(x)
    assert torch.equal(out, x[:, :3])


def test_encoder_taps_follow_cuts_layer_indices():
    net = AttentionResnetGenerator(width=8, n_blocks=5)
    features = net(torch.rand(1, 4, 32, 32), taps=(0, 4, 8, 12, 16))
    # CUT resnet generator: 0 = reflection-padded input, 4 / 8 = the downsampling convs (before their
    # blur-pool), 12 / 16 = residual blocks 1 and 5 at 1/4 resolution
    assert [tuple(f.shape[1:]) for f in features] == [(4, 38, 38), (16, 32, 32), (32, 16, 16), (32, 8, 8), (32, 8, 8)]
    assert [net.encoder_channels[i] for i in (0, 4, 8, 12, 16)] == [4, 16, 32, 32, 32]


def test_feature_attention_mixes_distant_positions_once_its_gamma_is_learned():
    torch.manual_seed(0)
    attention = FeatureAttention(16, reduction=4)
    x = torch.randn(1, 16, 8, 8)
    far = x.clone()
    far[:, :, 7, 7] += 3.0
    with torch.no_grad():
        # gamma starts at 0: only the channel attention acts, a pixel's output sees its own features and
        # the global average, so a distant change moves it little; once gamma is set it moves more
        before = (attention(far) - attention(x))[:, :, 0, 0].abs().sum()
        attention.gamma.fill_(1.0)
        after = (attention(far) - attention(x))[:, :, 0, 0].abs().sum()
    assert after > 2 * before > 0


def test_default_config_is_cuts_and_the_generator_is_cuts_resnet_plus_attention(capsys):
    method = build_method("contrastive_inpaint", {})
    cfg = method.cfg
    assert (cfg.width, cfg.n_blocks, cfg.disc_width, cfg.nce_layers) == (64, 9, 64, (0, 4, 8, 12, 16))
    assert (cfg.nce_temperature, cfg.num_patches, cfg.projection_dim) == (0.07, 256, 256)
    assert (cfg.lambda_nce, cfg.lambda_gan, cfg.nce_idt, cfg.gan_kind) == (1.0, 1.0, True, "lsgan")
    assert (cfg.lr, cfg.betas) == (2e-4, (0.5, 0.999))
    counts = parameter_count(method)
    generator = method.networks()["g"]
    attention = sum(p.numel() for p in generator.attention.parameters())
    mask_channel = 64 * 7 * 7  # the fourth input channel of the first 7x7 conv
    assert counts["g"] - attention - mask_channel == CUT_RESNET_9BLOCKS_PARAMETERS
    assert counts["d"] == 2_763_776  # components/networks/patchgan.py, width 64, RGB
    with capsys.disabled():
        print(f"\ncontrastive_inpaint parameters at the paper-default config: {counts}, total {sum(counts.values()):,}"
              f" (feature attention {attention:,})")


def test_config_names_nce_layers_outside_the_encoder_and_refuses_a_generator_without_loss():
    with pytest.raises(ValidationError, match="nce_layers"):
        build_method("contrastive_inpaint", {**TINY, "nce_layers": [0, 4, 8, 16]})  # n_blocks 2: last layer is 13
    with pytest.raises(ValidationError, match="nce_layers"):
        build_method("contrastive_inpaint", {**TINY, "nce_layers": [8, 4]})
    with pytest.raises(ValidationError, match="lambda_nce and lambda_gan"):
        build_method("contrastive_inpaint", {**TINY, "lambda_nce": 0, "lambda_gan": 0})


def test_is_an_unpaired_inpainting_method_reading_hq_and_mask():
    method = tiny_method()
    cls = method_class("contrastive_inpaint")
    assert (cls.task, cls.inputs, cls.unpaired) == ("inpainting", ("hq", "mask"), ("hq",))
    assert set(method.networks()) == {"g", "f", "d"} and set(method.optimizers()) == {"g", "f", "d"}


def test_training_steps_log_finite_losses_and_give_every_parameter_a_gradient():
    method = tiny_method()
    for step in (1, 2, 3):  # the zero head opens the generator on step 2, the attention's gamma on step 3
        losses = method.training_step(unpaired_batch(seed=step), step)
    assert set(losses) == {"loss_g", "g_gan", "nce", "nce_idt", "known_l1", "loss_d", "d_real", "d_fake"}
    assert all(math.isfinite(v) for v in losses.values())
    for net_name, net in method.networks().items():
        for name, param in net.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{net_name}.{name}"


def test_the_contrastive_terms_fall_and_the_adversarial_terms_stay_finite_on_a_fixed_batch():
    method = tiny_method()
    batch = unpaired_batch()
    logged = [method.training_step(dict(batch), step) for step in range(1, 61)]
    for key in ("nce", "nce_idt"):
        # step 1 is skipped: the untrained generator returns its input, so its patches match trivially
        values = [losses[key] for losses in logged[1:]]
        first, last = mean(values[:5]), mean(values[-5:])
        assert last < 0.8 * first, f"{key} did not fall: first {first:.3f}, last {last:.3f}"
    for key in ("g_gan", "loss_d", "d_real", "d_fake"):
        assert all(math.isfinite(losses[key]) for losses in logged), key


def test_once_trained_restore_fills_the_holes_with_more_than_the_mean_colour():
    method = tiny_method()
    batch = unpaired_batch()
    for step in (1, 2, 3):
        method.training_step(batch, step)
    restored = method.restore(batch)
    holes = batch["mask"].bool().expand_as(restored)
    assert not torch.equal(restored[holes], fill_holes(batch["lq"], batch["mask"])[holes])


def test_clean_pixels_inside_the_holes_never_reach_a_loss_or_a_gradient():
    batch = unpaired_batch()
    noisy = dict(batch)
    holes = batch["mask"].bool().expand_as(batch["hq"])
    noisy["hq"] = torch.where(holes, torch.rand_like(batch["hq"]), batch["hq"])
    assert not torch.equal(noisy["hq"], batch["hq"])
    first = tiny_method()
    second = copy.deepcopy(first)
    for step in (1, 2):
        torch.manual_seed(step)
        losses_clean = first.training_step(dict(batch), step)
        torch.manual_seed(step)
        losses_noisy = second.training_step(dict(noisy), step)
        assert losses_clean == losses_noisy
        for net_name in ("g", "f", "d"):
            clean = dict(first.networks()[net_name].named_parameters())
            for name, param in second.networks()[net_name].named_parameters():
                assert torch.equal(param, clean[name]), f"{net_name}.{name}"
                assert (param.grad is None) == (clean[name].grad is None)
                if param.grad is not None:
                    assert torch.equal(param.grad, clean[name].grad), f"{net_name}.{name}"


def test_the_discriminator_sees_unpaired_faces_as_real_and_never_the_training_faces():
    method = tiny_method()
    batch = unpaired_batch()
    seen = []
    discriminator = method.networks()["d"]

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.inner(x)

    method.networks()["d"] = Spy(discriminator)
    method.training_step(dict(batch), 1)
    n = len(batch["hq"])
    assert len(seen) == 2  # discriminator step on fake + real, generator step on fake
    assert torch.equal(seen[0][n:], batch["unpaired_hq"])
    for images in seen:
        for face in batch["hq"]:
            assert not any(torch.equal(face, image) for image in images)


def test_training_without_the_unpaired_stream_is_refused_by_name():
    batch = unpaired_batch()
    del batch["unpaired_hq"]
    with pytest.raises(KeyError, match="unpaired_hq"):
        tiny_method().training_step(batch, 1)


def test_short_cpu_training_fills_the_holes_better_than_the_mean_colour():
    method = tiny_method()
    train = face_batch(n=16, size=32, columns=("hq", "mask"), seed=1)
    real = face_batch(n=16, size=32, columns=("hq",), seed=2)["hq"]
    held_out = face_batch(n=8, size=32, columns=("hq", "mask"), seed=3)
    order = torch.Generator().manual_seed(0)
    for step in range(1, 151):
        picked, other = torch.randperm(16, generator=order)[:4], torch.randperm(16, generator=order)[:4]
        method.training_step({"hq": train["hq"][picked], "mask": train["mask"][picked], "unpaired_hq": real[other]},
                             step)
    hq, mask = held_out["hq"], held_out["mask"]
    restored = method.restore({"lq": hq, "mask": mask})
    mean_fill = fill_holes(hq * (1 - mask), mask)
    assert psnr(restored, hq, mask=mask).nanmean() > psnr(mean_fill, hq, mask=mask).nanmean() + 0.5


def test_the_pixels_hidden_for_self_supervision_are_known_pixels_only():
    from components.models.contrastive_inpaint import known_pixels_to_hide

    mask = face_batch(n=4, size=32, columns=("mask",), seed=1)["mask"]
    hidden = known_pixels_to_hide(mask)
    assert hidden.sum() > 0 and (hidden * mask).sum() == 0
    assert known_pixels_to_hide(mask[:1]).sum() > 0  # a batch of one still hides something
