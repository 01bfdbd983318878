import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from components.models import build_method, load_method
from components.models.base import NotARestorer
from components.models.stylegan2 import StyleGAN2, r1_penalty
from components.networks.moving_average import accumulate
from components.networks.stylegan2 import Blur, ModulatedConv2d, Upsample, blur_kernel, shared_weight_convs
from components.networks.stylegan2_convert import export_state_dict, import_state_dict, official_key_map
from tests.unit.method_checks import (
    TINY_CONFIGS,
    assert_loss_falls,
    assert_training_step_finite_under_bf16,
    face_batch,
    parameter_count,
    run_ddp_steps,
)

# 16 px, 8 channels everywhere (512 / 64), a 2-layer mapping of width 16: a few thousand parameters.
TINY = TINY_CONFIGS["stylegan2"]
REGULARISE_EVERY_STEP = {"d_reg_every": 1, "g_reg_every": 1}


def tiny(**overrides) -> StyleGAN2:
    torch.manual_seed(0)
    return build_method("stylegan2", {**TINY, **overrides})


def faces(n=4, size=16, seed=0):
    return face_batch(n=n, size=size, columns=("hq",), seed=seed)


def upfirdn2d_reference(x, kernel, up=1, down=1, pad=(0, 0)):
    """upfirdn2d from its definition (zero-insert, pad, correlate with the flipped kernel, subsample)."""
    n, c, h, w = x.shape
    if up > 1:
        spread = x.new_zeros(n, c, h * up, w * up)
        spread[:, :, ::up, ::up] = x
        x = spread
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, [0, 1]).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)[:, :, ::down, ::down]


# -- networks ----------------------------------------------------------------------------------
def test_upsample_and_blur_equal_upfirdn2d_with_the_official_pads():
    x = torch.randn(2, 3, 8, 8)
    kernel = blur_kernel(gain=4.0)
    assert torch.allclose(Upsample()(x), upfirdn2d_reference(x, kernel, up=2, pad=(2, 1)), atol=1e-6)
    assert torch.allclose(Blur((1, 1), gain=4.0)(x), upfirdn2d_reference(x, kernel, pad=(1, 1)), atol=1e-6)
    assert torch.allclose(blur_kernel().sum(), torch.tensor(1.0))


@pytest.mark.parametrize("upsample", [False, True])
def test_modulated_conv_equals_a_per_sample_reference(upsample):
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 6, 3, style_dim=5, upsample=upsample)
    x, w = torch.randn(3, 4, 8, 8), torch.randn(3, 5)
    out = conv(x, w)
    for i in range(3):
        style = F.linear(w[i], conv.modulation.weight * conv.modulation.scale, conv.modulation.bias)
        weight = conv.scale * conv.weight * style.view(1, 4, 1, 1)
        weight = weight / weight.pow(2).sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        if upsample:  # rosinality: stride-2 transposed conv, then upfirdn2d blur with pads (1, 1)
            ref = F.conv_transpose2d(x[i:i + 1], weight.transpose(0, 1), stride=2)
            ref = upfirdn2d_reference(ref, blur_kernel(gain=4.0), pad=(1, 1))
        else:
            ref = F.conv2d(x[i:i + 1], weight, padding=1)
        assert torch.allclose(out[i:i + 1], ref, atol=1e-5)
    assert out.shape == (3, 6, 16, 16) if upsample else (3, 6, 8, 8)


@pytest.mark.parametrize("upsample, demodulate", [(False, True), (True, True), (False, False)])
def test_the_shared_weight_form_of_a_modulated_conv_computes_the_grouped_one(upsample, demodulate):
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 6, 3 if demodulate else 1, style_dim=5, demodulate=demodulate, upsample=upsample)
    x, w = torch.randn(3, 4, 8, 8), torch.randn(3, 5)
    grouped = conv(x, w)
    with shared_weight_convs(conv):
        shared = conv(x, w)
    assert conv.per_sample_weights  # the block put the grouped form back
    torch.testing.assert_close(shared, grouped, atol=1e-5, rtol=1e-5)


def test_a_generator_in_the_shared_weight_form_makes_the_same_faces():
    g = tiny().prior
    z = torch.randn(3, 16)
    grouped, _ = g(z, randomize_noise=False)
    with shared_weight_convs(g):
        shared, _ = g(z, randomize_noise=False)
    torch.testing.assert_close(shared, grouped, atol=1e-5, rtol=1e-5)


def test_demodulation_keeps_unit_output_variance_whatever_the_style_scale():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 16, 16)
    for demodulate in (True, False):
        conv = ModulatedConv2d(64, 64, 3, style_dim=16, demodulate=demodulate)
        stds = [conv(x, scale * torch.randn(8, 16)).std().item() for scale in (1.0, 10.0)]
        if demodulate:
            assert all(0.75 < s < 1.25 for s in stds), stds
        else:  # without demodulation a larger style scales the output up
            assert stds[1] > 3 * stds[0], stds


def test_generator_makes_rgb_at_the_resolution_and_one_latent_per_layer():
    method = tiny()
    g = method.networks()["g"]
    image, w_plus = g(torch.randn(3, 16))
    assert image.shape == (3, 3, 16, 16) and w_plus.shape == (3, g.n_latent, 16)
    assert g.n_latent == 6 == method.n_latent and g.num_layers == 5
    assert torch.isfinite(image).all() and 0.05 < image.std() < 5.0  # equalized lr keeps the scale near 1
    samples = method.generate(4, seed=1)
    assert samples.shape == (4, 3, 16, 16) and samples.dtype == torch.float32
    assert samples.min() >= 0.0 and samples.max() <= 1.0 and samples.std() > 0.01
    assert torch.equal(samples, method.generate(4, seed=1))
    assert not torch.equal(samples, method.generate(4, seed=2))


def test_samples_for_the_logged_grid_are_the_same_faces_until_the_generator_changes():
    method = tiny()
    first = method.samples()
    assert first.shape == (16, 3, 16, 16) and torch.equal(first, method.samples())
    method.training_step({"hq": torch.rand(4, 3, 16, 16)}, 1)
    accumulate(method.networks()["g_ema"], method.networks()["g"], decay=0.0)
    assert not torch.equal(first, method.samples())


def test_truncation_pulls_samples_towards_the_mean_latent():
    method = tiny()
    assert method.mean_latent(n_samples=256).shape == (1, 16)
    spread = [method.generate(8, seed=0, truncation=psi).std(dim=0).mean().item() for psi in (1.0, 0.0)]
    assert spread[1] < 0.8 * spread[0], spread


def test_synthesize_hands_each_resolution_to_the_fuse_hook_like_panini_net():
    method = tiny()
    g = method.prior
    w_plus = g.w_plus(torch.randn(2, 16))
    plain, features = g.synthesize(w_plus, randomize_noise=False)
    assert {res: tuple(f.shape) for res, f in features.items()} == {4: (2, 8, 4, 4), 8: (2, 8, 8, 8),
                                                                    16: (2, 8, 16, 16)}
    seen = []
    same, _ = g.synthesize(w_plus, randomize_noise=False, fuse=lambda res, f: seen.append(res) or f)
    assert seen == [4, 8, 16] and torch.equal(same, plain)
    changed, _ = g.synthesize(w_plus, randomize_noise=False,
                              fuse=lambda res, f: torch.zeros_like(f) if res == 8 else f)
    assert not torch.allclose(changed, plain)
    with pytest.raises(ValueError, match=r"w_plus must be \(N, 6, 16\)"):
        g.synthesize(torch.randn(2, 5, 16))


def test_default_config_is_config_f_at_1024_with_rosinalitys_parameter_counts():
    cfg = StyleGAN2.Config()
    assert (cfg.resolution, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, cfg.lr_mlp) == (1024, 512, 8, 2, 0.01)
    assert (cfg.lr, cfg.betas, cfg.r1_gamma, cfg.d_reg_every, cfg.pl_weight, cfg.g_reg_every) == \
        (0.002, (0.0, 0.99), 10.0, 16, 2.0, 4)
    with torch.device("meta"):  # shapes only: no 90 M random numbers to draw
        method = build_method("stylegan2", {})
    counts = parameter_count(method)
    print(f"stylegan2 default (1024 px, config F) parameters: {counts}")
    assert counts == {"g": 30_370_060, "d": 29_012_513, "g_ema": 30_370_060}
    assert method.n_latent == 18  # what Panini-Net's encoder predicts (18 x style_channels)
    assert method.prior.channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64,
                                     1024: 32}


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ValidationError, match="resolution must be a power of 2"):
        build_method("stylegan2", {**TINY, "resolution": 24})
    with pytest.raises(ValidationError, match="resolution must be a power of 2"):
        build_method("stylegan2", {**TINY, "resolution": 2048})
    with pytest.raises(ValidationError, match="width_scale"):
        build_method("stylegan2", {**TINY, "width_scale": 1 / 1024})
    with pytest.raises(ValidationError, match="pretrained_layout"):
        build_method("stylegan2", {**TINY, "pretrained_layout": "nvidia"})


def test_restore_raises_because_a_prior_restores_nothing():
    with pytest.raises(NotARestorer, match="GAN prior.*generate"):
        tiny().restore(faces())


# -- training ----------------------------------------------------------------------------------
def test_optimisers_use_adam_0_099_with_the_lazy_regularisation_correction():
    method = tiny()
    g_group, d_group = method.optimizers()["g"].param_groups[0], method.optimizers()["d"].param_groups[0]
    assert g_group["lr"] == pytest.approx(0.002 * 4 / 5) and d_group["lr"] == pytest.approx(0.002 * 16 / 17)
    assert g_group["betas"] == pytest.approx((0.0, 0.99 ** (4 / 5)))
    assert d_group["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert tiny(pl_weight=0.0).optimizers()["g"].param_groups[0]["lr"] == pytest.approx(0.002)


@pytest.mark.parametrize("last_g_term", ["adversarial", "path_length"])
def test_a_step_logs_every_term_and_reaches_mapping_and_every_to_rgb(last_g_term):
    method = tiny(**(REGULARISE_EVERY_STEP if last_g_term == "path_length" else {"pl_weight": 0.0}))
    losses = method.training_step(faces(), step=1)
    assert set(losses) == {"d", "g", "r1", "path", "path_length", "real_score", "fake_score"}
    assert all(math.isfinite(v) for v in losses.values())
    g = method.networks()["g"]
    for name, param in g.named_parameters():  # the gradients of the last G backward of the step
        if name.startswith("mapping.") or ".to_rgb.conv." in name or name == "const":
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert (g.path_length_mean > 0) == (last_g_term == "path_length")


def test_r1_penalty_is_finite_and_positive():
    method = tiny()
    real = (faces()["hq"] * 2 - 1).requires_grad_(True)
    penalty = r1_penalty(method.networks()["d"](real), real)
    assert math.isfinite(penalty.item()) and penalty.item() > 0
    penalty.backward()  # second-order: the penalty trains D
    assert all(p.grad is not None for p in method.networks()["d"].body.parameters())
    losses = tiny(d_reg_every=1).training_step(faces(), step=1)
    assert losses["r1"] > 0 and math.isfinite(losses["r1"])


def test_ema_update_moves_g_ema_toward_g_by_the_decay():
    method = tiny()
    g_ema = method.networks()["g_ema"]
    assert all(not p.requires_grad for p in g_ema.parameters())
    before = {k: v.clone() for k, v in g_ema.state_dict().items()}
    method.training_step(faces(), step=1)
    decay = method.ema_decay(4)
    assert decay == pytest.approx(0.5 ** (4 / 10.0))  # ema_kimg 0.01: half-life 10 images
    g = method.networks()["g"].state_dict()
    moved = 0
    for name, value in g_ema.named_parameters():
        expected = decay * before[name] + (1 - decay) * g[name]
        assert torch.allclose(value, expected, atol=1e-6), name
        moved += not torch.equal(value, before[name])
    assert moved > 0
    assert StyleGAN2.Config(resolution=16).ema_kimg == 10.0
    assert tiny(ema_kimg=10.0).ema_decay(32) == pytest.approx(0.5 ** (32 / 10_000))  # rosinality's accum


def test_discriminator_loss_falls_on_a_fixed_real_batch_against_fresh_fakes():
    method = tiny(lr=0.002, r1_gamma=0.0, pl_weight=0.0)
    for group in method.optimizers()["g"].param_groups:  # G frozen: only D learns
        group["lr"] = 0.0
    assert_loss_falls(method, faces(), "d", steps=40, factor=0.7)


def test_path_length_penalty_falls_and_adversarial_terms_stay_finite():
    method = tiny(**REGULARISE_EVERY_STEP)
    batch = faces()
    history = [method.training_step(dict(batch), step) for step in range(1, 31)]
    path = [losses["path"] for losses in history]
    assert sum(path[-5:]) < 0.5 * sum(path[:5]), path
    assert all(math.isfinite(losses[key]) for losses in history for key in ("d", "g", "r1"))


def test_training_step_with_both_regularisers_is_finite_under_bf16_autocast():
    losses = assert_training_step_finite_under_bf16(tiny(**REGULARISE_EVERY_STEP), faces())
    assert losses["r1"] > 0 and losses["path_length"] > 0


def test_training_step_rejects_a_batch_of_the_wrong_resolution():
    with pytest.raises(ValueError, match="resolution 16 needs hq"):
        tiny().training_step(faces(size=32), step=1)


def test_ddp_two_processes_train_with_both_regularisers():
    losses = run_ddp_steps("stylegan2", {**TINY, **REGULARISE_EVERY_STEP}, faces(), steps=2)
    assert len(losses) == 2 and all(math.isfinite(v) for step in losses for v in step.values())


def test_short_cpu_training_beats_the_untrained_generator_on_held_out_faces():
    """300 images of procedural faces at 32 px: samples of g_ema move towards held-out faces'
    per-pixel mean and spread (on 8x8 average-pooled images) - at least halving the untrained distance."""
    train = faces(n=32, size=32, seed=0)["hq"]
    held_out = faces(n=64, size=32, seed=1)["hq"]

    def distance(fake):
        fake, real = F.avg_pool2d(fake, 4), F.avg_pool2d(held_out, 4)
        return ((fake.mean(0) - real.mean(0)).abs().mean() + (fake.std(0) - real.std(0)).abs().mean()).item()

    torch.manual_seed(0)
    method = build_method("stylegan2", {"resolution": 32, "style_dim": 32, "n_mlp": 2, "width_scale": 1 / 32,
                                        "ema_kimg": 0.1})
    untrained = distance(method.generate(64, seed=5))
    order = torch.Generator().manual_seed(0)
    for step in range(1, 101):
        method.training_step({"hq": train[torch.randperm(32, generator=order)[:8]]}, step)
    trained = distance(method.generate(64, seed=5))
    assert trained < 0.5 * untrained, (untrained, trained)


# -- official checkpoints --------------------------------------------------------------------
def reference_shapes(layout, resolution=16, style_dim=16, n_mlp=2, channels=8):
    """Key -> shape of rosinality's / BasicSR's Generator state dict, written from their model code
    (rosinality model.py `Generator`, BasicSR stylegan2_arch.py `StyleGAN2Generator`), not from our map."""
    log_size = int(math.log2(resolution))
    ros = layout == "rosinality"
    mlp, const, conv1, convs = ("style", "input.input", "conv1", "convs") if ros else \
        ("style_mlp", "constant_input.weight", "style_conv1", "style_convs")
    mod = "conv" if ros else "modulated_conv"
    shapes = {}
    for i in range(1, n_mlp + 1):
        shapes.update({f"{mlp}.{i}.weight": (style_dim, style_dim), f"{mlp}.{i}.bias": (style_dim,)})
    shapes[const] = (1, channels, 4, 4)

    def styled(prefix, upsample):
        shapes.update({f"{prefix}.{mod}.weight": (1, channels, channels, 3, 3),
                       f"{prefix}.{mod}.modulation.weight": (channels, style_dim),
                       f"{prefix}.{mod}.modulation.bias": (channels,),
                       f"{prefix}.{'noise.weight' if ros else 'weight'}": (1,),
                       f"{prefix}.activate.bias": (channels,)})
        if ros and upsample:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)

    def to_rgb(prefix, upsample):
        shapes.update({f"{prefix}.{mod}.weight": (1, 3, channels, 1, 1),
                       f"{prefix}.{mod}.modulation.weight": (channels, style_dim),
                       f"{prefix}.{mod}.modulation.bias": (channels,), f"{prefix}.bias": (1, 3, 1, 1)})
        if ros and upsample:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)

    styled(conv1, False)
    to_rgb("to_rgb1", False)
    for i in range(log_size - 2):
        styled(f"{convs}.{2 * i}", True)
        styled(f"{convs}.{2 * i + 1}", False)
        to_rgb(f"to_rgbs.{i}", True)
    for layer in range(2 * log_size - 3):
        size = 2 ** ((layer + 5) // 2)
        shapes[f"noises.noise_{layer}" if ros else f"noises.noise{layer}"] = (1, 1, size, size)
    return shapes


@pytest.mark.parametrize("layout", ["rosinality", "basicsr"])
def test_key_map_is_a_bijection_onto_the_official_layout(layout):
    g_state = tiny().networks()["g"].state_dict()
    theirs = export_state_dict(g_state, layout, n_mlp=2, resolution=16)
    assert {k: tuple(v.shape) for k, v in theirs.items()} == reference_shapes(layout)
    key_map = official_key_map(layout, n_mlp=2, resolution=16)
    assert len(set(key_map.values())) == len(key_map)  # one-to-one
    assert set(key_map.values()) | {"path_length_mean"} == set(g_state)  # onto every tensor of ours
    back = import_state_dict(theirs, layout)
    assert set(back) == set(g_state) and all(torch.equal(back[k], g_state[k]) for k in g_state)


@pytest.mark.parametrize("layout", ["rosinality", "basicsr"])
def test_official_values_land_in_the_matching_layers(layout):
    torch.manual_seed(1)
    theirs = {k: torch.randn(shape) for k, shape in reference_shapes(layout).items()}
    ros = layout == "rosinality"
    if ros:
        theirs.update({k: blur_kernel(gain=4.0) for k in theirs if k.endswith("kernel")})
    ours = import_state_dict(theirs, layout)
    mlp, conv1, convs, mod = ("style", "conv1", "convs", "conv") if ros else \
        ("style_mlp", "style_conv1", "style_convs", "modulated_conv")
    noise = "noise.weight" if ros else "weight"
    expected = {  # our key: (their key, how the value is reshaped)
        "mapping.layers.0.weight": f"{mlp}.1.weight", "mapping.layers.1.bias": f"{mlp}.2.bias",
        "const": "input.input" if ros else "constant_input.weight",
        "blocks.0.conv.conv.weight": f"{conv1}.{mod}.weight", "blocks.0.conv.noise_strength": f"{conv1}.{noise}",
        "blocks.0.to_rgb.bias": "to_rgb1.bias",
        "blocks.1.up_conv.conv.modulation.weight": f"{convs}.0.{mod}.modulation.weight",
        "blocks.1.conv.bias": f"{convs}.1.activate.bias", "blocks.2.up_conv.noise_strength": f"{convs}.2.{noise}",
        "blocks.2.conv.conv.modulation.bias": f"{convs}.3.{mod}.modulation.bias",
        "blocks.2.to_rgb.conv.weight": f"to_rgbs.1.{mod}.weight",
        "blocks.0.conv.fixed_noise": "noises.noise_0" if ros else "noises.noise0",
        "blocks.2.conv.fixed_noise": "noises.noise_4" if ros else "noises.noise4",
    }
    for our_key, their_key in expected.items():
        assert torch.equal(ours[our_key].flatten(), theirs[their_key].flatten()), (our_key, their_key)
    assert ours["blocks.0.conv.conv.weight"].shape == (8, 8, 3, 3) and ours["blocks.0.to_rgb.bias"].shape == (3,)


@pytest.mark.parametrize(("layout", "entry"), [("rosinality", "g_ema"), ("basicsr", "params_ema")])
def test_pretrained_checkpoint_generates_what_its_source_generates(tmp_path, layout, entry):
    source = tiny()
    for step in (1, 2):  # move g_ema off its initial copy of g
        source.training_step(faces(), step)
    theirs = export_state_dict(source.prior.state_dict(), layout, n_mlp=2, resolution=16)
    decoy = {k: torch.zeros_like(v) for k, v in theirs.items()}  # the other entry must not be the one read
    checkpoint = {entry: theirs, "g" if layout == "rosinality" else "params": decoy}
    torch.save(checkpoint, tmp_path / "ffhq.pt")
    loaded = tiny(pretrained=str(tmp_path / "ffhq.pt"), pretrained_layout=layout)
    expected = source.generate(3, seed=11)
    assert torch.equal(loaded.generate(3, seed=11), expected)
    assert torch.equal(loaded.networks()["g"].const, source.prior.const)  # g starts from the prior too
    state, config = loaded.export()
    assert config["config"]["pretrained"] is None
    assert torch.equal(load_method(state, config).generate(3, seed=11), expected)


def test_pretrained_errors_name_the_problem(tmp_path):
    g_state = tiny().prior.state_dict()
    theirs = export_state_dict(g_state, "rosinality", n_mlp=2, resolution=16)
    torch.save({"g_ema": {**theirs, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pt")
    with pytest.raises(KeyError, match="unexpected.*extra.weight"):
        tiny(pretrained=str(tmp_path / "extra.pt"))
    torch.save({"g_ema": theirs}, tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="does not fit the config.*style_dim"):
        tiny(pretrained=str(tmp_path / "ok.pt"), style_dim=32)
    with pytest.raises(KeyError, match="no params_ema / params entry"):
        tiny(pretrained=str(tmp_path / "ok.pt"), pretrained_layout="basicsr")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        tiny(pretrained=str(tmp_path / "missing.pt"))
