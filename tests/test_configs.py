"""Every shipped YAML config loads and resolves to a valid model and training options."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertcli.config import BertConfig
from bertcli.errors import ConfigError
from bertcli.tasks.pretraining import PretrainConfig, resolve_train_args

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "bert-base.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path, tmp_path):
    cfg = PretrainConfig.from_yaml(path)
    model = BertConfig.from_dict({"vocab_size": 1000, **cfg.model}, source=str(path))
    assert cfg.data.max_seq_length <= model.max_positions
    args = resolve_train_args(str(tmp_path), cfg, {})
    assert args.max_steps and args.batch_size >= 1


def test_base_config_is_bert_base():
    cfg = PretrainConfig.from_yaml(CONFIGS[[p.name for p in CONFIGS].index("bert-base.yaml")])
    model = BertConfig.from_dict({"vocab_size": 30522, **cfg.model})
    assert (model.num_layers, model.hidden_size, model.num_heads, model.intermediate_size) == (12, 768, 12, 3072)


def test_bad_sections(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("modle:\n  preset: tiny\n")
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        PretrainConfig.from_yaml(p)
    p.write_text("data:\n  objective: mlm+xyz\n")
    with pytest.raises(ConfigError, match="objective"):
        PretrainConfig.from_yaml(p)
    p.write_text("masking:\n  mask_prob: 2\n")
    with pytest.raises(ConfigError, match="mask"):
        PretrainConfig.from_yaml(p)
