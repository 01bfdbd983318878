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
