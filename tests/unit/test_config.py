from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config, resolved_config

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
    cfg = load_config(DEMO, ["train_baseline.lr=2e-4", "synthesize.source.count=64"])
    assert cfg.stages["train_baseline"].config.lr == pytest.approx(2e-4)
    assert cfg.stages["synthesize"].config.source.count == 64


def test_unknown_stage_key_is_named_with_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["train_baseline.lrr=1"])
    assert "unknown key 'stages.train_baseline.lrr'" in str(err.value)
    assert "allowed:" in str(err.value) and "lr" in str(err.value)


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
    with pytest.raises(ConfigError, match="model.widht"):
        load_config(DEMO, ["train_baseline.model.widht=8"])


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
