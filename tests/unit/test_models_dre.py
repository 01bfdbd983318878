import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from components.data.degrade import DegradationParams
from components.data.degrade_gpu import degrade_batch
from components.models import build_method, load_method
from components.models import dre as dre_module
from components.models.base import NotARestorer
from components.models.dre import DRE, derangement
from components.networks.dre import DegradationEncoder, MomentumKeyEncoder
from tests.unit.method_checks import TINY_CONFIGS, face_batch, parameter_count

TINY = TINY_CONFIGS["dre"]
SMALL_DEGRADATION = TINY["degradation"]


@pytest.fixture(scope="module")
def faces():
    return face_batch(n=8, size=32, columns=("hq",), seed=0)


# -- the encoder -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
def test_encoder_maps_images_to_a_4x_width_feature_and_a_dim_projection_and_backpropagates(size):
    net = DegradationEncoder(width=8, dim=16, input_size=None)
    x = torch.rand(3, 3, size, size, requires_grad=True)
    feature, projection = net(x)
    assert feature.shape == (3, 32) and projection.shape == (3, 16)
    projection.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_encoder_average_pools_its_input_to_input_size_first():
    torch.manual_seed(0)
    net = DegradationEncoder(width=8, dim=16, input_size=32).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.represent(x), net.represent(F.avg_pool2d(x, 2)), atol=1e-6)
        assert not torch.allclose(net.represent(x), DegradationEncoder(8, 16, None).eval().represent(x))


def test_encoder_rejects_an_image_that_is_not_rgb():
    with pytest.raises(ValueError, match="needs \\(N, 3, H, W\\)"):
        DegradationEncoder(8, 16, None)(torch.rand(2, 1, 32, 32))


def test_paper_default_config_has_1_278_784_parameters_per_encoder():
    counts = parameter_count(build_method("dre", {}))
    print(f"dre parameters at the paper's config: {counts}")
    # 6 convs 1,145,408 + BatchNorm 1,792 + MLP head 131,584 (moco/deg_encoder.py)
    assert counts == {"encoder": 1_278_784, "key_encoder": 1_278_784}


def test_paper_defaults_are_the_official_moco_settings():
    cfg = DRE.Config()
    assert (cfg.dim, cfg.queue_size, cfg.momentum, cfg.temperature) == (256, 8192, 0.999, 0.07)
    assert (cfg.optimizer, cfg.lr, cfg.sgd_momentum, cfg.weight_decay) == ("sgd", 0.03, 0.9, 1e-4)
    assert (cfg.width, cfg.input_size) == (64, 256)


@pytest.mark.parametrize("key, value", [("momentum", 1.0), ("momentum", -0.1), ("temperature", 0.0),
                                        ("queue_size", 0), ("width", 0), ("input_size", 0)])
def test_config_rejects_impossible_values_naming_the_key(key, value):
    with pytest.raises(ValidationError, match=key):
        build_method("dre", {key: value})


# -- MoCo's key side ---------------------------------------------------------------------
def test_key_encoder_starts_as_a_frozen_copy_of_the_query_encoder_so_ddp_never_wraps_it():
    method = build_method("dre", TINY)
    query, key_side = method.networks()["encoder"], method.networks()["key_encoder"]
    assert isinstance(key_side, MomentumKeyEncoder)
    for (name, q), k in zip(query.state_dict().items(), key_side.encoder.state_dict().values()):
        assert torch.equal(q, k), name
    assert not any(p.requires_grad for p in key_side.parameters())
    assert all(p.requires_grad for p in query.parameters())


def test_momentum_update_is_m_times_key_plus_1_minus_m_times_query_exactly():
    torch.manual_seed(0)
    query = DegradationEncoder(8, 16, None)
    for param in query.parameters():  # BatchNorm starts at ones / zeros in both: make every entry differ
        param.data.normal_()
    key_side = MomentumKeyEncoder(DegradationEncoder(8, 16, None), 4, 16)
    before = [p.clone() for p in key_side.encoder.parameters()]
    key_side.momentum_update(query, 0.9)
    for after, k, q in zip(key_side.encoder.parameters(), before, query.parameters(), strict=True):
        assert not torch.equal(after, k)
        assert torch.equal(after, k * 0.9 + q * (1 - 0.9))


def test_queue_starts_as_unit_rows_and_enqueue_overwrites_the_oldest_wrapping_around():
    key_side = MomentumKeyEncoder(DegradationEncoder(8, 4, None), queue_size=5, dim=4)
    assert key_side.queue.shape == (5, 4) and int(key_side.queue_ptr) == 0
    assert torch.allclose(key_side.queue.norm(dim=1), torch.ones(5))
    initial = key_side.queue.clone()
    keys = torch.arange(24, dtype=torch.float32).view(6, 4)
    key_side.enqueue(keys[:3])
    assert torch.equal(key_side.queue[:3], keys[:3]) and torch.equal(key_side.queue[3:], initial[3:])
    assert int(key_side.queue_ptr) == 3
    key_side.enqueue(keys[3:])  # rows 3, 4, then 0
    assert torch.equal(key_side.queue, torch.stack([keys[5], keys[1], keys[2], keys[3], keys[4]]))
    assert int(key_side.queue_ptr) == 1
    written = -torch.cat([keys, keys[:1]])  # 7 keys, more than the queue holds
    key_side.enqueue(written)
    # as if written one after another from row 1: keys 2..6 end in rows 3, 4, 0, 1, 2; the pointer moves 7 rows
    assert torch.equal(key_side.queue, torch.stack([written[4], written[5], written[6], written[2], written[3]]))
    assert int(key_side.queue_ptr) == 3


def test_queue_and_pointer_are_buffers_a_checkpoint_carries():
    state = build_method("dre", TINY).networks()["key_encoder"].state_dict()
    assert state["queue"].shape == (32, 16) and state["queue_ptr"].tolist() == [0]


# -- the pairs ---------------------------------------------------------------------------
def test_derangement_never_pairs_a_face_with_itself():
    rng = np.random.default_rng(0)
    for n in (2, 3, 8):
        for _ in range(20):
            partner = derangement(n, rng)
            assert sorted(partner) == list(range(n)) and all(partner[i] != i for i in range(n))


def test_pairs_share_degradation_parameters_and_differ_in_content(faces):
    cfg = {**TINY, "degradation": {**SMALL_DEGRADATION, "noise": [0, 0]}}
    method = build_method("dre", cfg)
    hq = faces["hq"]
    pairs = method.degraded_pairs(hq, step=3)
    n = hq.shape[0]
    assert pairs.queries.shape == pairs.keys.shape == hq.shape and pairs.queries.dtype == torch.float32
    assert all(pairs.partner[i] != i for i in range(n))
    assert len({p.sigma_x for p in pairs.params}) == n  # a fresh draw per pair
    for i in range(n):
        params = [pairs.params[i]]
        own = degrade_batch(hq[i:i + 1] * 255, params).float() / 255
        other = degrade_batch(hq[pairs.partner[i]:pairs.partner[i] + 1] * 255, params).float() / 255
        assert (pairs.queries[i] - own[0]).abs().max() <= 1.5 / 255  # batched vs single: rounding only
        assert (pairs.keys[i] - other[0]).abs().max() <= 1.5 / 255
        assert (pairs.queries[i] - pairs.keys[i]).abs().mean() > 0.02  # two different faces


def test_the_same_step_draws_the_same_pairs_so_a_resumed_run_repeats_them(faces):
    first, again = build_method("dre", TINY), build_method("dre", TINY)
    a, b = first.degraded_pairs(faces["hq"], 5), again.degraded_pairs(faces["hq"], 5)
    assert a.params == b.params and a.partner == b.partner
    assert torch.equal(a.queries, b.queries) and torch.equal(a.keys, b.keys)
    assert first.degraded_pairs(faces["hq"], 6).params != a.params
    assert build_method("dre", {**TINY, "seed": 1}).degraded_pairs(faces["hq"], 5).params != a.params


def test_each_rank_draws_its_own_degradations(faces, monkeypatch):
    method = build_method("dre", TINY)
    on_rank_0 = method.degraded_pairs(faces["hq"], 5).params
    monkeypatch.setattr(dre_module, "_rank", lambda: 1)
    assert method.degraded_pairs(faces["hq"], 5).params != on_rank_0


def test_a_batch_of_one_face_is_refused_because_it_has_no_partner(faces):
    with pytest.raises(ValueError, match="batch_size >= 2"):
        build_method("dre", TINY).training_step({"hq": faces["hq"][:1]}, 1)


# -- training ----------------------------------------------------------------------------
def test_training_step_trains_the_query_encoder_only_and_enqueues_the_batch_keys(faces):
    torch.manual_seed(0)
    method = build_method("dre", TINY)
    key_side = method.networks()["key_encoder"]
    key_before = [p.clone() for p in key_side.parameters()]
    queue_before = key_side.queue.clone()
    metrics = method.training_step(dict(faces), step=1)
    assert set(metrics) == {"loss", "infonce", "positive_top1"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    for name, param in method.networks()["encoder"].named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in key_side.parameters())
    assert int(key_side.queue_ptr) == 8
    assert not torch.equal(key_side.queue[:8], queue_before[:8]) and torch.equal(key_side.queue[8:], queue_before[8:])
    assert torch.allclose(key_side.queue[:8].norm(dim=1), torch.ones(8), atol=1e-5)
    method.training_step(dict(faces), step=2)  # the query encoder has moved: the key encoder follows
    assert any(not torch.equal(p, b) for p, b in zip(key_side.parameters(), key_before))


def test_infonce_falls_on_a_fixed_batch_of_faces(faces):
    torch.manual_seed(0)
    cfg = {**TINY, "width": 16, "queue_size": 16, "optimizer": "adam", "lr": 1e-3}
    method = build_method("dre", cfg)
    method.training_step(dict(faces), 1)  # from step 2 on the queue holds real keys, not its random init
    loss = [method.training_step(dict(faces), step)["infonce"] for step in range(2, 102)]
    assert all(math.isfinite(v) for v in loss)
    assert sum(loss[-10:]) / 10 < 0.85 * sum(loss[:10]) / 10, loss


# -- inference and export ----------------------------------------------------------------
def test_represent_is_the_unnormalised_pooled_feature_of_the_query_encoder_in_eval_mode(faces):
    torch.manual_seed(0)
    method = build_method("dre", TINY)
    method.training_step(dict(faces), 1)
    vectors = method.represent(faces["hq"])
    assert vectors.shape == (8, 32) and vectors.dtype == torch.float32 and not vectors.requires_grad
    assert not torch.allclose(vectors.norm(dim=1), torch.ones(8))
    encoder = method.networks()["encoder"]
    assert encoder.training  # represent puts the training mode back
    with torch.no_grad():
        expected = encoder.eval().represent(faces["hq"])
    assert torch.equal(vectors, expected)


def test_restore_says_the_dre_is_not_an_image_restorer_and_points_to_represent(faces):
    with pytest.raises(NotARestorer, match="not an image restorer.*represent"):
        build_method("dre", TINY).restore({"lq": faces["hq"]})


def test_export_then_load_method_represents_identically(faces):
    torch.manual_seed(0)
    method = build_method("dre", TINY)
    for step in (1, 2):
        method.training_step(dict(faces), step)
    state, config = method.export()
    assert {key.split(".")[0] for key in state} == {"encoder", "key_encoder"}
    assert "key_encoder.queue" in state and "key_encoder.queue_ptr" in state
    loaded = load_method(load_safetensors(save_safetensors(state)), config)
    assert torch.equal(loaded.represent(faces["hq"]), method.represent(faces["hq"]))
    assert torch.equal(loaded.networks()["key_encoder"].queue, method.networks()["key_encoder"].queue)


# -- what pretraining buys ---------------------------------------------------------------
BLUR_LEVELS = (0.3, 1.5, 3.0)


def knn_level_accuracy(method, reference_faces, query_faces, k=5):
    """Blur level of each query face predicted by a k-NN vote (cosine) over reference faces; the
    two sets hold different faces, so only the degradation can match a query to its level."""
    def vectors(images):
        return torch.cat([F.normalize(method.represent(blurred(images, sigma)), dim=1) for sigma in BLUR_LEVELS])

    def blurred(images, sigma):
        params = DegradationParams(13, sigma, sigma, 0.0, 1.0, 0.0, 100)
        return degrade_batch(images * 255, [params] * len(images)).float() / 255

    reference, queries = vectors(reference_faces), vectors(query_faces)
    levels = torch.arange(len(BLUR_LEVELS))
    reference_levels = levels.repeat_interleave(len(reference_faces))
    query_levels = levels.repeat_interleave(len(query_faces))
    votes = reference_levels[(queries @ reference.T).topk(k, dim=1).indices]
    return (votes.mode(dim=1).values == query_levels).float().mean().item()


def test_short_cpu_pretraining_makes_the_vectors_predict_the_blur_level_of_unseen_faces():
    torch.manual_seed(0)
    pool = face_batch(n=32, size=32, columns=("hq",), seed=0)["hq"]
    held_out = face_batch(n=24, size=32, columns=("hq",), seed=1)["hq"]
    cfg = {**TINY, "width": 16, "dim": 64, "queue_size": 128, "optimizer": "adam", "lr": 1e-3}
    method = build_method("dre", cfg)
    untrained = knn_level_accuracy(method, held_out[:12], held_out[12:])
    order = torch.Generator().manual_seed(0)
    history = [method.training_step({"hq": pool[torch.randperm(32, generator=order)[:16]]}, step)
               for step in range(1, 151)]
    trained = knn_level_accuracy(method, held_out[:12], held_out[12:])
    print(f"k-NN blur-level accuracy on held-out faces: untrained {untrained:.3f}, trained {trained:.3f}, "
          f"chance {1 / 3:.3f}")
    assert trained > 1 / 3 + 0.2
    assert trained > untrained + 0.15
    # steps 1-8 contrast against the queue's random init; from step 9 on it holds 128 real keys
    loss = [h["infonce"] for h in history]
    top1 = [h["positive_top1"] for h in history]
    assert sum(loss[-20:]) / 20 < 0.85 * sum(loss[10:30]) / 20
    assert sum(top1[-20:]) / 20 > sum(top1[10:30]) / 20 + 0.1
