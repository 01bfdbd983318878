"""What the training loop adds to a method's own step: the moving average of the weights, lr
schedules, validation scores and best-weights selection, fine-tuning's start, and the train
stage's config errors for them (components/training, pipelines/stages/train.py)."""

import math

import pytest
import torch
from torch import nn

from components.metrics.knn import knn_accuracy
from components.models import build_method
from components.models.files import save_model_dir
from components.training import checkpoint
from components.networks.moving_average import accumulate
from components.training.ema import WeightAverage, decay_at
from components.training.finetune import check_fits, read_source, start_from
from components.training.schedule import LrSchedule, ScheduleConfig, lr_factor
from components.training.validation import BestWeights, is_better
from pipelines.config import ConfigError, parse_config
from tests.unit.method_checks import TINY_CONFIGS

# -- the moving average ------------------------------------------------------------------


def test_the_average_of_a_toy_network_equals_its_closed_form():
    """ema_T = prod(d_i) w_0 + sum_i (1 - d_i) prod_{j > i} d_j w_i, with d_i the ramped decay."""
    torch.manual_seed(0)
    live, average = nn.Linear(3, 2), nn.Linear(3, 2)
    average.load_state_dict(live.state_dict())
    history = [live.weight.detach().clone()]
    for update in range(1, 31):
        with torch.no_grad():
            live.weight.add_(torch.randn_like(live.weight))
        history.append(live.weight.detach().clone())
        accumulate(average, live, decay_at(0.9, update))
    decays = [decay_at(0.9, n) for n in range(1, 31)]
    expected = math.prod(decays) * history[0]
    for i in range(1, 31):
        expected = expected + (1 - decays[i - 1]) * math.prod(decays[i:]) * history[i]
    torch.testing.assert_close(average.weight, expected, rtol=1e-5, atol=1e-6)


def test_the_decay_ramps_up_to_the_configured_one():
    assert decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert decay_at(0.999, 100) == pytest.approx(101 / 110)
    assert decay_at(0.999, 100_000) == 0.999
    assert decay_at(0.5, 20) == 0.5


def test_an_average_follows_only_the_averaged_networks_and_copies_the_others_when_synced():
    torch.manual_seed(0)
    live = build_method("cafin", TINY_CONFIGS["cafin"])
    shadow = build_method("cafin", TINY_CONFIGS["cafin"])
    average = WeightAverage(live, shadow, ema_decay=0.5)
    assert average.names == ("g",)
    before = {name: {k: v.clone() for k, v in live.nets[name].state_dict().items()} for name in ("g", "d")}
    with torch.no_grad():
        for name in ("g", "d"):
            for param in live.nets[name].parameters():
                param.add_(1.0)
    average.update()  # decay_at(0.5, 1) = 2 / 11: the average moves 9 / 11 of the way
    g_param = next(iter(live.nets["g"].state_dict()))
    torch.testing.assert_close(shadow.nets["g"].state_dict()[g_param], before["g"][g_param] + 9 / 11)
    d_param = next(k for k, _ in live.nets["d"].named_parameters())
    torch.testing.assert_close(shadow.nets["d"].state_dict()[d_param], before["d"][d_param])
    average.sync()
    torch.testing.assert_close(shadow.nets["d"].state_dict()[d_param], before["d"][d_param] + 1)


def test_methods_with_their_own_average_get_none_from_the_loop():
    prior = build_method("stylegan2", TINY_CONFIGS["stylegan2"])
    dre = build_method("dre", TINY_CONFIGS["dre"])
    assert WeightAverage(prior, build_method("stylegan2", TINY_CONFIGS["stylegan2"]), 0.999).names == ()
    assert WeightAverage(dre, build_method("dre", TINY_CONFIGS["dre"]), 0.999).names == ()


# -- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, expected", [
    ({"kind": "constant"}, {1: 1.0, 50: 1.0, 100: 1.0}),
    ({"kind": "cosine"}, {0: 1.0, 50: 0.5, 100: 0.0}),
    ({"kind": "cosine", "min_lr_ratio": 0.1}, {50: 0.55, 100: 0.1}),
    ({"kind": "multistep", "milestones": [0.6, 0.8], "gamma": 0.1}, {59: 1.0, 60: 0.1, 79: 0.1, 80: 0.01, 100: 0.01}),
    ({"kind": "linear", "decay_from": 0.9}, {90: 1.0, 95: 0.5, 100: 0.0}),
    ({"kind": "linear", "decay_from": 0.5, "min_lr_ratio": 0.2}, {50: 1.0, 75: 0.6, 100: 0.2}),
    ({"kind": "constant", "warmup_steps": 10}, {1: 0.1, 5: 0.5, 10: 1.0, 11: 1.0}),
    ({"kind": "cosine", "warmup_steps": 20}, {10: 0.5, 20: 1.0, 60: 0.5, 100: 0.0}),
])
def test_a_schedule_gives_its_lr_factor_at_given_steps(schedule, expected):
    cfg = ScheduleConfig.model_validate(schedule)
    for step, factor in expected.items():
        assert lr_factor(cfg, step, steps=100) == pytest.approx(factor, abs=1e-9), step


def test_a_schedule_sets_each_param_group_from_its_built_lr_whatever_a_loaded_state_held():
    net = nn.Linear(2, 2)
    opt = torch.optim.Adam([{"params": [net.weight], "lr": 1e-3}, {"params": [net.bias], "lr": 4e-3}])
    schedule = LrSchedule(ScheduleConfig(kind="cosine"), 100, {"g": opt})
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = 123.0  # a checkpoint holds the lr of its own step
    opt.load_state_dict(saved)
    schedule.apply(50)
    assert [group["lr"] for group in opt.param_groups] == pytest.approx([5e-4, 2e-3])


@pytest.mark.parametrize("bad", [{"kind": "multistep"}, {"kind": "multistep", "milestones": [0.8, 0.6]},
                                 {"kind": "multistep", "milestones": [1.5]}, {"kind": "step"}])
def test_a_bad_schedule_is_refused(bad):
    with pytest.raises(ValueError):
        ScheduleConfig.model_validate(bad)


# -- validation and the best weights -------------------------------------------------------


def test_best_selection_follows_a_scripted_validation_curve():
    method = build_method("baseline", TINY_CONFIGS["baseline"])
    best = BestWeights("psnr")
    curve = {10: 20.0, 20: 22.5, 30: 22.1, 40: 23.0, 50: 21.0}
    kept = {}
    for step, psnr in curve.items():
        with torch.no_grad():
            for param in method.nets["g"].parameters():
                param.fill_(step)
        if best.offer(step, {"psnr": psnr, "l1": 0.1}, method, method, ("g",)):
            kept[step] = psnr
    assert list(kept) == [10, 20, 40]
    assert (best.step, best.score) == (40, 23.0)
    assert all(bool((value == 40).all()) for key, value in best.nets["g"].items() if "weight" in key)
    restored = BestWeights.from_state(best.state())
    assert (restored.step, restored.score) == (40, 23.0)


def test_lower_is_better_metrics_select_the_lowest():
    assert is_better("l1_hole", 0.1, 0.2) and not is_better("l1_hole", 0.3, 0.2)
    assert is_better("psnr", 25.0, 24.0) and is_better("psnr", 1.0, None) and not is_better("psnr", float("nan"), None)


def test_a_select_metric_the_validation_lacks_is_named():
    method = build_method("baseline", TINY_CONFIGS["baseline"])
    with pytest.raises(KeyError, match="'psnr_hole' is not among the validation scores"):
        BestWeights("psnr_hole").offer(1, {"psnr": 20.0}, method, method, ("g",))


def test_the_export_takes_the_best_or_the_average_of_the_last_step():
    state = {"step": 50, "nets": {"g": {"w": torch.zeros(1)}, "d": {"w": torch.ones(1)}},
             "ema": {"updates": 50, "nets": {"g": {"w": torch.full((1,), 0.5)}}},
             "val_history": [{"step": 40, "psnr": 23.0}, {"step": 50, "psnr": 21.0}],
             "best": {"step": 40, "score": 23.0, "scores": {"psnr": 23.0}, "nets": {"g": {"w": torch.full((1,), 4.0)}},
                      "raw": {"g": {"w": torch.full((1,), 3.0)}}, "metric": "psnr"}}
    nets, live, step, scores = checkpoint.exported_weights(state, "last")
    assert (float(nets["g"]["w"]), float(nets["d"]["w"]), float(live["g"]["w"]), step, scores) == (0.5, 1.0, 0.0, 50,
                                                                                                    {"psnr": 21.0})
    nets, live, step, scores = checkpoint.exported_weights(state, "best")
    assert (float(nets["g"]["w"]), float(live["g"]["w"]), step, scores) == (4.0, 3.0, 40, {"psnr": 23.0})


def test_knn_accuracy_counts_the_samples_whose_neighbours_share_their_label():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0], [0.1, 0.9], [0.05, 0.95]])
    assert knn_accuracy(features, ["a", "a", "a", "b", "b", "b"], k=2) == 1.0
    assert knn_accuracy(features, ["a", "b", "a", "b", "a", "b"], k=1) == pytest.approx(4 / 6)  # 1 and 4 have a neighbour of the other label
    with pytest.raises(ValueError, match="at least 2 samples"):
        knn_accuracy(features[:1], ["a"])


def test_the_dre_validates_by_knn_accuracy_of_degradation_levels():
    torch.manual_seed(0)
    dre = build_method("dre", TINY_CONFIGS["dre"])
    lq = torch.rand(6, 3, 16, 16)
    scores = dre.validation_scores({"lq": lq}, {"degradation_level": ["mild"] * 3 + ["severe"] * 3})
    assert set(scores) == {"knn_accuracy"} and 0.0 <= scores["knn_accuracy"] <= 1.0


# -- fine-tuning ----------------------------------------------------------------------------


def save_trained(method, directory, live=None):
    state, config = method.export()
    save_model_dir(str(directory), state, config, live)


def test_a_fine_tune_starts_at_the_source_weights_discriminator_included(tmp_path):
    torch.manual_seed(1)
    source = build_method("cafin", TINY_CONFIGS["cafin"])
    live_g = {f"g.{k}": v + 1 for k, v in source.nets["g"].state_dict().items()}
    save_trained(source, tmp_path, live_g)
    torch.manual_seed(2)
    fresh = build_method("cafin", TINY_CONFIGS["cafin"])
    weights = read_source(str(tmp_path))
    check_fits(fresh, weights, "the source")
    start_from(fresh, weights)
    for key, value in source.nets["d"].state_dict().items():
        torch.testing.assert_close(fresh.nets["d"].state_dict()[key], value)
    for key, value in source.nets["g"].state_dict().items():  # the live generator, not its average
        torch.testing.assert_close(fresh.nets["g"].state_dict()[key], value + 1)


def test_a_source_of_other_shapes_or_another_method_is_refused_naming_the_keys(tmp_path):
    save_trained(build_method("cafin", {**TINY_CONFIGS["cafin"], "d_width": 16}), tmp_path / "wide")
    save_trained(build_method("baseline", TINY_CONFIGS["baseline"]), tmp_path / "baseline")
    target = build_method("cafin", TINY_CONFIGS["cafin"])
    with pytest.raises(ValueError, match=r"mismatched keys\): d\.\S+: shape \[16\] where this stage.s is \[8\]") as err:
        check_fits(target, read_source(str(tmp_path / "wide")), "'wide'")
    assert "init_from 'wide'" in str(err.value)
    with pytest.raises(ValueError, match="is a 'baseline' model; this stage trains 'cafin'"):
        check_fits(target, read_source(str(tmp_path / "baseline")), "'baseline'")


# -- the train stage's config -----------------------------------------------------------------


def stage_config(**train):
    return {"name": "t", "stages": {"synthesize": {}, "train": {"needs": ["synthesize"], "steps": 100, **train}}}


@pytest.mark.parametrize("train, message", [
    ({"val_every": 200}, r"val_every \(200\) is above steps \(100\)"),
    ({"select": "best"}, "select: best needs validation: set val_every"),
    ({"method": "stylegan2", "method_config": TINY_CONFIGS["stylegan2"], "val_every": 10},
     "val_every: method 'stylegan2' has no validation scores"),
    ({"schedule": {"kind": "multistep"}}, "a multistep schedule needs milestones"),
    ({"ema_decay": 1.0}, "stages.train.ema_decay"),
])
def test_training_settings_that_cannot_work_are_config_errors_naming_the_key(train, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(stage_config(**train))


def test_select_best_ranks_by_the_tasks_score_unless_named():
    cfg = parse_config(stage_config(method="cafin", val_every=10, select="best")).stages["train"].config
    assert cfg.selection_metric() == "psnr_hole"
    cfg = parse_config(stage_config(val_every=10, select="best", select_metric="ssim")).stages["train"].config
    assert cfg.selection_metric() == "ssim"


def test_the_model_card_says_which_step_the_weights_come_from_and_their_val_scores():
    from components.tracking.pull import training_lines

    lines = training_lines({"steps": 300, "step": 250, "select": "best", "select_metric": "psnr_hole",
                            "ema_decay": 0.999, "val": {"psnr_hole": 19.42, "psnr": 27.9},
                            "init_from": "models:/facerestore-cafin/3"})
    assert lines == ["- weights: step 250 of 300 (best validation by val psnr_hole; EMA decay 0.999)",
                     "- val scores at that step: psnr 27.9, psnr_hole 19.42",
                     "- fine-tuned from: `models:/facerestore-cafin/3`"]
    assert training_lines({}) == []


def test_plan_pins_a_model_directory_by_its_files_and_a_stage_by_nothing(tmp_path):
    from pipelines.stages.train import resolve

    save_trained(build_method("baseline", TINY_CONFIGS["baseline"]), tmp_path / "m")
    cfg = parse_config(stage_config(init_from=str(tmp_path / "m"))).stages["train"].config
    no_registry = lambda: pytest.fail("a directory or a stage needs no tracking server")  # noqa: E731
    pinned = resolve(cfg, ("synthesize",), {"synthesize", "train"}, no_registry).init_from_resolved
    assert pinned.startswith("sha256:")
    save_trained(build_method("baseline", {**TINY_CONFIGS["baseline"], "width": 4}), tmp_path / "m")
    assert resolve(cfg, ("synthesize",), {"synthesize", "train"}, no_registry).init_from_resolved != pinned

    from_stage = cfg.model_copy(update={"init_from": "earlier"})
    assert resolve(from_stage, ("synthesize", "earlier"), {"synthesize", "earlier", "train"},
                   no_registry).init_from_resolved is None
    with pytest.raises(ValueError, match="stage 'earlier' must be in this stage's needs"):
        resolve(from_stage, ("synthesize",), {"synthesize", "earlier", "train"}, no_registry)
