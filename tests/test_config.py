"""BertConfig (presets, validation, YAML and config.json mapping), option helpers, device choice."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from bertcli.config import (
    PRESETS,
    BertConfig,
    check_options,
    load_yaml,
    merge_options,
    options_from_dict,
    read_json,
    save_yaml,
)
from bertcli.errors import ConfigError, DeviceError

# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "name, layers, hidden",
    [("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512), ("medium", 8, 512), ("base", 12, 768),
     ("large", 24, 1024)],
)
def test_preset_shapes(name, layers, hidden):
    cfg = BertConfig.preset(name)
    assert (cfg.num_layers, cfg.hidden_size) == (layers, hidden)
    assert cfg.num_heads == hidden // 64
    assert cfg.intermediate_size == 4 * hidden
    assert cfg.head_dim == 64


def test_preset_list_and_overrides():
    assert list(PRESETS) == ["tiny", "mini", "small", "medium", "base", "large"]
    cfg = BertConfig.preset("tiny", vocab_size=1000, max_positions=128)
    assert (cfg.vocab_size, cfg.max_positions, cfg.hidden_size) == (1000, 128, 128)
    with pytest.raises(ConfigError, match="unknown preset 'huge'; valid presets: tiny, mini"):
        BertConfig.preset("huge")


def test_base_defaults_are_bert_base():
    cfg = BertConfig()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (
        30522, 768, 12, 12, 3072)
    assert (cfg.max_positions, cfg.type_vocab_size, cfg.activation, cfg.layer_norm_eps) == (512, 2, "gelu", 1e-12)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(hidden_size=100, num_heads=12), r"'hidden_size' \(100\) must be divisible by 'num_heads' \(12\).*\[1, 2, 4, 5"),
        (dict(num_layers=0), r"'num_layers' must be a positive integer, got 0"),
        (dict(vocab_size=-5), r"'vocab_size' must be a positive integer"),
        (dict(activation="swish"), r"'activation' is 'swish'; valid values: gelu, gelu_tanh, relu"),
        (dict(hidden_dropout=1.0), r"'hidden_dropout' must be in \[0, 1\)"),
        (dict(attention_dropout=-0.1), r"'attention_dropout' must be in \[0, 1\)"),
        (dict(vocab_size=10, pad_token_id=10), r"'pad_token_id' \(10\) must be in \[0, vocab_size=10\)"),
        (dict(layer_norm_eps=0.0), r"'layer_norm_eps' must be positive"),
        (dict(hidden_size="768"), r"'hidden_size' must be an integer, got '768' \(str\)"),
        (dict(num_layers=True), r"'num_layers' must be an integer, got True"),
        (dict(hidden_size=768.0), r"'hidden_size' must be an integer"),
        (dict(hidden_dropout="0.1"), r"'hidden_dropout' must be a number"),
    ],
)
def test_validation_names_the_field(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        BertConfig(**kwargs)


def test_int_accepted_for_float_fields():
    cfg = BertConfig(hidden_dropout=0, layer_norm_eps=1)
    assert isinstance(cfg.hidden_dropout, float) and isinstance(cfg.layer_norm_eps, float)


# --------------------------------------------------------------------------- dicts and YAML


def test_dict_round_trip_and_hf_aliases():
    cfg = BertConfig.preset("mini", vocab_size=5000)
    assert BertConfig.from_dict(cfg.to_dict()) == cfg
    alias = BertConfig.from_dict({"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 2,
                                  "hidden_act": "gelu_new", "vocab_size": 100})
    assert (alias.num_layers, alias.num_heads, alias.activation) == (3, 2, "gelu_tanh")
    from_preset = BertConfig.from_dict({"preset": "tiny", "vocab_size": 777})
    assert from_preset == BertConfig.preset("tiny", vocab_size=777)


def test_from_dict_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model.yaml: unknown key 'hiden_size'; valid keys: .*hidden_size"):
        BertConfig.from_dict({"hiden_size": 64}, source="model.yaml")
    with pytest.raises(ConfigError, match=r"model.yaml: BertConfig field 'num_layers' must be an integer, got 'two'"):
        BertConfig.from_dict({"num_layers": "two"}, source="model.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        BertConfig.from_dict([1, 2], source="model.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        BertConfig.from_dict({"preset": "gigantic"})


def test_yaml_in_and_out(tmp_path):
    cfg = BertConfig.preset("tiny", vocab_size=1234, hidden_dropout=0.2)
    path = tmp_path / "model.yaml"
    save_yaml(cfg.to_dict(), path)
    assert BertConfig.from_dict(load_yaml(path), source=str(path)) == cfg
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "preset.yaml").write_text("preset: small\nvocab_size: 300  # comment\n")
    assert BertConfig.from_dict(load_yaml(tmp_path / "preset.yaml")) == BertConfig.preset("small", vocab_size=300)


def test_yaml_refuses_python_tags_without_running_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f'hidden_size: 64\nx: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"evil.yaml, line 2: .*python/object/apply.*plain YAML only"):
        load_yaml(bad)
    assert not marker.exists()
    bad.write_text("x: !!python/name:os.system\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_yaml(bad)


def test_yaml_errors_are_located(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("hidden_size: 64\nnum_layers: 2\nhidden_size: 128\n")
    with pytest.raises(ConfigError, match=r"dup.yaml, line 3: duplicate key 'hidden_size'"):
        load_yaml(dup)
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  a: 1\n  a: 2\n")
    with pytest.raises(ConfigError, match=r"nested.yaml, line 3: duplicate key 'a'"):
        load_yaml(nested)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"broken.yaml, line \d+, column \d+: invalid YAML"):
        load_yaml(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_yaml(listy)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not valid UTF-8 at byte 9"):
        load_yaml(latin)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("hidden_size: 1e3\n")  # YAML 1.1: a string, not a number
    with pytest.raises(ConfigError, match="'hidden_size' must be an integer"):
        BertConfig.from_dict(load_yaml(wrong), source=str(wrong))


# --------------------------------------------------------------------------- Hugging Face config.json


def test_hf_round_trip():
    cfg = BertConfig(vocab_size=999, hidden_size=48, num_layers=3, num_heads=3, intermediate_size=96,
                     max_positions=64, type_vocab_size=3, activation="gelu_tanh", layer_norm_eps=1e-6,
                     hidden_dropout=0.05, attention_dropout=0.0, pad_token_id=1, initializer_range=0.01)
    hf = cfg.to_hf()
    assert hf["model_type"] == "bert" and hf["hidden_act"] == "gelu_pytorch_tanh"
    assert hf["num_hidden_layers"] == 3 and hf["max_position_embeddings"] == 64
    assert BertConfig.from_hf(json.loads(json.dumps(hf))) == cfg


def test_hf_config_matches_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = BertConfig.preset("tiny", vocab_size=500)
    hf_cfg = transformers.BertConfig(**cfg.to_hf())
    assert (hf_cfg.hidden_size, hf_cfg.num_hidden_layers, hf_cfg.num_attention_heads, hf_cfg.intermediate_size) == (
        128, 2, 2, 512)
    back = BertConfig.from_hf(hf_cfg.to_dict())
    assert back == cfg


def test_real_minilm_config(minilm_dir):
    cfg = BertConfig.from_hf(read_json(minilm_dir / "config.json"))
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.vocab_size) == (
        6, 384, 12, 1536, 30522)


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"model_type": "gpt2"}, "model_type is 'gpt2'; bertcli reads model_type bert, roberta, xlm-roberta, distilbert, albert, electra"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key' is not supported"),
        ({"hidden_act": "silu"}, "hidden_act 'silu' is not supported; valid values: gelu, gelu_new"),
        ({"num_attention_heads": 5}, "'hidden_size' \\(128\\) must be divisible by 'num_heads' \\(5\\)"),
        ({"vocab_size": "lots"}, "'vocab_size' must be an integer"),
    ],
)
def test_hf_config_errors(change, pattern):
    hf = {**BertConfig.preset("tiny").to_hf(), **change}
    with pytest.raises(ConfigError, match="config.json: .*" + pattern):
        BertConfig.from_hf(hf)


def test_hf_null_pad_token_means_zero():
    hf = {**BertConfig.preset("tiny").to_hf(), "pad_token_id": None}
    assert BertConfig.from_hf(hf).pad_token_id == 0


def test_read_json_errors(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ConfigError, match=r"c.json, line 2, column 7: invalid JSON"):
        read_json(bad)
    with pytest.raises(ConfigError, match="file not found"):
        read_json(tmp_path / "none.json")


# --------------------------------------------------------------------------- option dataclasses


@dataclass
class _Opts:
    lr: float = 1e-4
    epochs: int = 3
    name: str | None = None

    def __post_init__(self):
        check_options(self)


def test_option_helpers():
    opts = options_from_dict(_Opts, {"lr": 1, "epochs": 2}, "train.yaml")
    assert opts == _Opts(lr=1.0, epochs=2)
    with pytest.raises(ConfigError, match="train.yaml: unknown key 'epoch'; valid keys: epochs, lr, name"):
        options_from_dict(_Opts, {"epoch": 2}, "train.yaml")
    with pytest.raises(ConfigError, match="train.yaml: _Opts field 'epochs' must be an integer, got 2.5"):
        options_from_dict(_Opts, {"epochs": 2.5}, "train.yaml")
    merged = merge_options(opts, {"lr": 0.5, "epochs": None, "name": "x"})
    assert merged == _Opts(lr=0.5, epochs=2, name="x")


# --------------------------------------------------------------------------- device and precision


@pytest.fixture
def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_device_on_cpu(no_gpu):
    from bertcli.device import resolve_device

    assert resolve_device("auto").type == "cpu"
    assert resolve_device("").type == "cpu"
    assert resolve_device("CPU").type == "cpu"


@pytest.mark.parametrize(
    "spec, pattern",
    [("cuda", "--device cuda: no CUDA GPU is available; use --device cpu or auto"),
     ("cuda:1", "--device cuda:1: no CUDA GPU"),
     ("mps", "--device mps: MPS is not available"),
     ("tpu", "--device tpu: unknown device; valid: auto|cpu|cuda|cuda:N|mps")],
)
def test_device_errors(no_gpu, spec, pattern):
    from bertcli.device import resolve_device

    with pytest.raises(DeviceError, match=pattern):
        resolve_device(spec)


def test_precision_choice(no_gpu, monkeypatch):
    import torch

    import bertcli.device as dev

    cpu = torch.device("cpu")
    assert dev.resolve_precision("fp32", cpu) == "fp32"
    assert dev.resolve_precision("BF16", cpu) == "bf16"
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.resolve_precision("auto", cpu) == "bf16"
    with pytest.raises(DeviceError, match="--precision fp16 is not supported on the CPU"):
        dev.resolve_precision("fp16", cpu)
    with pytest.raises(DeviceError, match="--precision fp64: valid values: auto, fp32, bf16, fp16"):
        dev.resolve_precision("fp64", cpu)
    assert dev.torch_dtype("bf16") is torch.bfloat16
    with dev.autocast(cpu, "bf16"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
    with dev.autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
