import warnings
from pathlib import Path

import pytest

from pipelines.config import ConfigDeprecation, ConfigError, load_config, resolved_config
from pipelines.runner import build_pipeline

DEMO = Path(__file__).parents[2] / "pipelines" / "configs" / "demo.yaml"


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_demo_config_loads_with_typed_stage_sections():
    cfg = load_config(DEMO)
    assert cfg.stages["train_baseline"].kind == "train"
    assert cfg.stages["train_baseline"].needs == ("synthesize",)
    assert cfg.stages["synthesize"].config.source.count > 0


def test_set_override_addresses_a_stage_by_name_and_is_typed():
    cfg = load_config(DEMO, ["train_baseline.method_config.lr=2e-4", "synthesize.source.count=64"])
    assert cfg.stages["train_baseline"].config.method_config["lr"] == pytest.approx(2e-4)
    assert cfg.stages["synthesize"].config.source.count == 64


def test_unknown_stage_key_is_named_with_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["train_baseline.lrr=1"])
    assert "unknown key 'stages.train_baseline.lrr'" in str(err.value)
    assert "allowed:" in str(err.value) and "method_config" in str(err.value)


def test_unknown_nested_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'stages.synthesize.degradation.blurr'"):
        load_config(DEMO, ["synthesize.degradation.blurr=1"])


def test_mistyped_value_names_the_key_and_value():
    with pytest.raises(ConfigError, match=r"'stages.train_baseline.steps'.*'many'"):
        load_config(DEMO, ["train_baseline.steps=many"])


def test_unknown_top_level_key_is_named(tmp_path):
    path = write(tmp_path, "name: x\nstroe: /tmp\nstages: {synthesize: {}}\n")
    with pytest.raises(ConfigError, match="unknown key 'stroe'"):
        load_config(path)


def test_unknown_stage_kind_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "name: x\nstages: {prep: {kind: preprocess}}\n")
    with pytest.raises(ConfigError, match="unknown stage kind 'preprocess'.*synthesize"):
        load_config(path)


def test_unknown_method_setting_is_named(tmp_path):
    with pytest.raises(ConfigError, match="method_config.widht"):
        load_config(DEMO, ["train_baseline.method_config.widht=8"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_is_json_and_lists_defaults():
    resolved = resolved_config(load_config(DEMO))
    assert resolved["stages"]["evaluate"]["split"] == "test"
    assert resolved["stages"]["train_baseline"]["workers"] == 2


PRESETS = """
name: p
stages:
  synthesize: {source: {kind: procedural, count: 64}, resolution: 32}
  train_baseline: {kind: train, needs: [synthesize], steps: 10}
presets:
  real: {synthesize.resolution: 256, train_baseline.steps: 5000, train_baseline.use_gpu: true}
"""


def test_a_preset_applies_its_overrides_and_a_set_still_wins_over_it(tmp_path):
    path = write(tmp_path, PRESETS)
    assert load_config(path).stages["synthesize"].config.resolution == 32
    cfg = load_config(path, ["train_baseline.steps=7"], preset="real")
    assert cfg.stages["synthesize"].config.resolution == 256
    assert cfg.stages["train_baseline"].config.use_gpu is True
    assert cfg.stages["train_baseline"].config.steps == 7


def test_an_unknown_preset_is_named_with_the_presets_there_are(tmp_path):
    with pytest.raises(ConfigError, match="no preset 'huge' \\(presets: real\\)"):
        load_config(write(tmp_path, PRESETS), preset="huge")


def test_a_preset_key_that_a_stage_rejects_is_named(tmp_path):
    path = write(tmp_path, PRESETS.replace("train_baseline.use_gpu", "train_baseline.gpus"))
    with pytest.raises(ConfigError, match="gpus"):
        load_config(path, preset="real")


OLD_KEYS = """
name: p
stages:
  synthesize: {source: {kind: procedural, count: 64}, resolution: 32}
  train_baseline: {kind: train, needs: [synthesize], steps: 10, lr: 1.0e-3, model: {width: 8, depth: 2}}
presets:
  real: {train_baseline.model: {depth: 3}}
"""
NEW_KEYS = """
name: p
stages:
  synthesize: {source: {kind: procedural, count: 64}, resolution: 32}
  train_baseline: {kind: train, needs: [synthesize], steps: 10, method_config: {width: 8, depth: 2, lr: 1.0e-3}}
"""


def load_quietly(path, overrides=(), preset=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigDeprecation)
        return load_config(path, list(overrides), preset=preset)


def test_the_old_model_and_lr_keys_still_work_and_warn_naming_the_new_key(tmp_path):
    old, new = write(tmp_path, OLD_KEYS), tmp_path / "new.yaml"
    new.write_text(NEW_KEYS)
    with pytest.warns(ConfigDeprecation) as caught:
        cfg = load_config(old)
    messages = [str(w.message) for w in caught]
    assert any("stage 'train_baseline': key 'model' is deprecated, use 'method_config'" in m for m in messages)
    assert any("stage 'train_baseline': key 'lr' is deprecated, use 'method_config.lr'" in m for m in messages)
    assert cfg.stages["train_baseline"].config.method_config == {"width": 8, "depth": 2, "lr": 1e-3}
    # a train stage hashes its resolved section, so the old spelling and the new one agree
    assert build_pipeline(cfg).fingerprints() == build_pipeline(load_config(new)).fingerprints()
    # `lr: null` meant "the method's own": not set
    cfg = load_quietly(write(tmp_path, OLD_KEYS.replace("lr: 1.0e-3", "lr: null")))
    assert cfg.stages["train_baseline"].config.method_config == {"width": 8, "depth": 2}


def test_old_keys_in_a_set_or_a_preset_move_to_method_config(tmp_path):
    path = write(tmp_path, NEW_KEYS)
    with pytest.warns(ConfigDeprecation) as caught:
        cfg = load_config(path, ["train_baseline.lr=2e-4", "train_baseline.model.depth=3"])
    assert "stage 'train_baseline': key 'lr' is deprecated, use 'method_config.lr' (--set: train_baseline.lr)" in {
        str(w.message) for w in caught}
    assert cfg.stages["train_baseline"].config.method_config == {"width": 8, "depth": 3, "lr": 2e-4}
    assert "lr" not in load_quietly(path, ["train_baseline.lr=null"]).stages["train_baseline"].config.method_config
    # `model: {...}` is `method_config: {...}`: it replaces the whole mapping, the `lr` in it too
    cfg = load_quietly(write(tmp_path, OLD_KEYS), preset="real")
    assert cfg.stages["train_baseline"].config.method_config == {"depth": 3}
    # a pattern reaches the old key too
    cfg = load_quietly(path, ["train_*.lr=5e-4"])
    assert cfg.stages["train_baseline"].config.method_config == {"width": 8, "depth": 2, "lr": 5e-4}


def test_an_old_key_beside_its_new_one_is_an_error_naming_the_stage(tmp_path):
    both = NEW_KEYS.replace("steps: 10,", "steps: 10, model: {width: 4},")
    with pytest.raises(ConfigError, match="stage 'train_baseline': 'model' and 'method_config' are both given"):
        load_quietly(write(tmp_path, both))
    both = NEW_KEYS.replace("steps: 10,", "steps: 10, lr: 2.0e-4,")
    with pytest.raises(ConfigError, match="stage 'train_baseline': 'lr' and 'method_config.lr' are both given"):
        load_quietly(write(tmp_path, both))


PATTERNS = """
name: p
stages:
  synthesize: {source: {kind: procedural, count: 64}, resolution: 32}
  train_a: {kind: train, needs: [synthesize], steps: 10, method_config: {width: 8}}
  train_b: {kind: train, needs: [synthesize], steps: 10}
  pretrain_c: {kind: train, needs: [synthesize], steps: 10}
  evaluate: {needs: [synthesize, train_a, train_b, pretrain_c]}
presets:
  real:
    train_b.steps: 7            # named outright: wins over the pattern below, whatever the order
    "*.use_gpu": true           # every stage that has `use_gpu`: the train stages
    "train_*.steps": 5000
    "train_*.method_config": {}
    "*.retries": 2              # a runner key every stage has
"""


def test_a_preset_pattern_reaches_every_matching_stage_that_has_the_key(tmp_path):
    cfg = load_config(write(tmp_path, PATTERNS), preset="real")
    train = {name: cfg.stages[name].config for name in ("train_a", "train_b", "pretrain_c")}
    assert all(c.use_gpu for c in train.values())
    assert (train["train_a"].steps, train["train_b"].steps, train["pretrain_c"].steps) == (5000, 7, 10)
    assert train["train_a"].method_config == {}
    assert all(section.retries == 2 for section in cfg.stages.values())


def test_a_set_takes_patterns_too_and_wins_over_the_preset(tmp_path):
    cfg = load_config(write(tmp_path, PATTERNS), ["*.steps=3", "train_a.method_config.width=4"], preset="real")
    assert {cfg.stages[name].config.steps for name in ("train_a", "train_b", "pretrain_c")} == {3}
    # the `{}` the pattern gave each stage is that stage's own
    assert (cfg.stages["train_a"].config.method_config, cfg.stages["train_b"].config.method_config) == ({"width": 4}, {})


@pytest.mark.parametrize(("key", "message"), [
    ("nothing_*.steps", r"'nothing_\*.steps': no stage matches 'nothing_\*' \(stages: synthesize, train_a"),
    ("*.stepz", r"'\*.stepz': no stage matching '\*' has a key 'stepz' \(matched: synthesize \(synthesize\)"),
    ("train_*", r"'train_\*': a stage pattern needs a key after it"),
])
def test_a_pattern_that_reaches_nothing_is_an_error(tmp_path, key, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, PATTERNS), [f"{key}=1"])


def test_every_real_preset_loads_without_a_deprecated_key():
    for path in sorted(DEMO.parent.glob("*.yaml")):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConfigDeprecation)
            load_config(path)
            if "presets:" in path.read_text():
                load_config(path, preset="real")
