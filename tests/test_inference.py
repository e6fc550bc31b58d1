"""Inference precisions: bf16 weights cast at load and dynamic int8, within their bounds of fp32.

Real MiniLM weights on STS-B sentences for the stated bounds; tiny random models for every family of the
core (each must run prepared, close to its fp32 outputs); int8 refused for training and off the CPU.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from bertcli.config import BertConfig
from bertcli.device import resolve_precision
from bertcli.errors import DeviceError
from bertcli.inference import (
    BF16_MIN_COSINE,
    INT8_MIN_COSINE,
    OneDnnLinear,
    forward_context,
    fused_gelu_available,
    prepare,
)
from bertcli.model import BertModel

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sentences(shared_data):
    from bertcli.data.tables import read_table

    table = read_table(shared_data / "stsb" / "sts-dev.csv", delimiter="\t", quoting=False, header=False)
    return list(dict.fromkeys(table.column("5") + table.column("6")))[:120]


@pytest.fixture(scope="module")
def minilm_vectors(minilm_dir, sentences):
    from bertcli import embed as E

    out = {}
    for precision in ("fp32", "bf16", "int8"):
        enc = E.load(minilm_dir, device="cpu", precision=precision)
        out[precision] = (enc, E.embed(sentences, enc).vectors)
    E._CACHE.clear()
    return out


@pytest.mark.parametrize(("precision", "bound"), [("bf16", BF16_MIN_COSINE), ("int8", INT8_MIN_COSINE)])
def test_minilm_within_the_stated_bound_of_fp32(minilm_vectors, precision, bound):
    enc, vectors = minilm_vectors[precision]
    ref = minilm_vectors["fp32"][1]
    assert enc.precision == precision and enc.model.prepared_precision == precision
    assert vectors.dtype == torch.float32
    cos = (vectors * ref).sum(-1)
    assert cos.min().item() >= bound
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(len(vectors)), atol=1e-5)  # normalised in fp32


def test_bf16_weights_cast_once_layernorm_kept_fp32(minilm_vectors):
    model = minilm_vectors["bf16"][0].model
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if ".norm." in n or n.startswith("embeddings.norm"))
    assert dtypes["layers.0.attn.qkv.weight"] == torch.bfloat16
    assert dtypes["embeddings.word.weight"] == torch.bfloat16
    if fused_gelu_available():
        assert isinstance(model.layers[0].ffn.up, OneDnnLinear) and model.layers[0].ffn.up.post == "gelu"
        assert isinstance(model.layers[0].attn.qkv, OneDnnLinear) and model.layers[0].attn.qkv.post == "none"


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_embed_identical_run_to_run(minilm_vectors, sentences, precision):
    from bertcli.embed import embed

    enc, first = minilm_vectors[precision]
    assert torch.equal(embed(sentences, enc).vectors, first)


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_linear_and_gelu(bias):
    if not fused_gelu_available():
        pytest.skip("oneDNN linear kernels are not available in this torch build")
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 48, bias=bias).to(torch.bfloat16)
    x = torch.randn(3, 7, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = lin(x).float()
        plain, fused = OneDnnLinear(lin)(x).float(), OneDnnLinear(lin, "gelu")(x).float()
    assert plain.shape == fused.shape == (3, 7, 48)
    assert (plain - ref).abs().max().item() < 0.05
    assert (fused - torch.nn.functional.gelu(ref)).abs().max().item() < 0.05


# ------------------------------------------------------------------ every family of the core
FAMILY_CONFIGS = {
    "bert": dict(model_type="bert"),
    "roberta": dict(model_type="roberta", type_vocab_size=1, pad_token_id=1),
    "distilbert": dict(model_type="distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64),
    "albert": dict(model_type="albert", embedding_size=16, num_hidden_groups=1, inner_group_num=1),
    "electra": dict(model_type="electra", embedding_size=16),
    "deberta-v2": dict(model_type="deberta-v2", relative_attention=True, pos_att_type=["p2c", "c2p"],
                       position_buckets=4, max_relative_positions=16, norm_rel_ebd="layer_norm",
                       position_biased_input=False, type_vocab_size=0, share_att_key=True),
    "modernbert": dict(model_type="modernbert", local_attention=4, global_attn_every_n_layers=2, bos_token_id=1,
                       eos_token_id=2, cls_token_id=1, sep_token_id=2),
}
SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=40, pad_token_id=0)


def _family_model(family: str) -> BertModel:
    config = BertConfig.from_hf({**SHAPE, **FAMILY_CONFIGS[family]})
    torch.manual_seed(0)
    model = BertModel(config, with_pooler=False).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _batch(pad: int):
    g = torch.Generator().manual_seed(0)
    lengths = [12, 5, 9]
    ids = torch.full((3, 12), pad, dtype=torch.long)
    mask = torch.zeros((3, 12), dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, 99, (n,), generator=g)
        mask[r, :n] = 1
    return ids, mask


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
@pytest.mark.parametrize(("precision", "bound"), [("bf16", 0.99), ("int8", 0.95)])
def test_every_family_runs_prepared_close_to_fp32(family, precision, bound):
    model = _family_model(family)
    ids, mask = _batch(model.config.pad_token_id)
    with torch.inference_mode():
        ref = model(ids, mask)
    fast = prepare(copy.deepcopy(model), CPU, precision)
    with torch.inference_mode(), forward_context(fast, CPU, precision):
        out = fast(ids, mask).float()
    keep = mask.bool()
    cos = torch.nn.functional.cosine_similarity(out[keep], ref[keep], dim=-1)
    assert cos.min().item() >= bound, (family, precision, cos.min().item())


def test_fp32_and_gpu_precisions_leave_the_model_alone():
    model = _family_model("bert")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    for device, precision in ((CPU, "fp32"), (torch.device("cuda"), "bf16"), (torch.device("cuda"), "fp16")):
        prepare(model, device, precision)  # GPU: weights stay fp32, the forward pass autocasts as before
        assert getattr(model, "prepared_precision", None) is None
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert forward_context(model, CPU, "bf16") is not None


# ------------------------------------------------------------------ refusals
def test_int8_refused_for_training_and_off_the_cpu():
    assert resolve_precision("int8", CPU, inference=True) == "int8"
    with pytest.raises(DeviceError, match="inference only"):
        resolve_precision("int8", CPU)
    with pytest.raises(DeviceError, match="CPU only"):
        resolve_precision("int8", torch.device("cuda"), inference=True)


def test_int8_on_an_unprepared_model_is_refused():
    model = _family_model("bert")
    with pytest.raises(DeviceError, match="prepared"):
        forward_context(model, CPU, "int8")


def test_pretrain_refuses_int8(cli, tmp_path, tiny_model_dir):
    result = cli("pretrain", "examples/corpus", "--tokenizer", tiny_model_dir, "--preset", "tiny",
                 "--out", tmp_path / "run", "--max-steps", "1", "--precision", "int8")
    assert result.exit_code == 1
    assert "inference only" in result.output and "Traceback" not in result.output


def test_cli_embed_int8_throughput_in_summary(cli, tiny_model_dir):
    result = cli("embed", "--model", tiny_model_dir, "--precision", "int8", "A man plays a guitar.", "A dog runs.")
    assert result.exit_code == 0, result.output
    assert "int8 on cpu" in result.output and "texts/s" in result.output


@pytest.mark.parametrize("command", ["embed", "similarity", "predict", "answer", "serve"])
def test_inference_help_states_the_measured_bounds(cli, command):
    text = " ".join(re.sub("[\u2500-\u257f]", " ", cli(command, "--help").output).split())  # no box lines
    assert "int8" in text and f">= {INT8_MIN_COSINE}" in text and f">= {BF16_MIN_COSINE}" in text


def test_training_help_does_not_offer_int8(cli):
    assert "int8" not in cli("pretrain", "--help").output


def test_auto_stays_fp32_on_a_cpu_without_bf16(monkeypatch, tiny_model_dir):
    from bertcli import embed as E

    monkeypatch.setattr("bertcli.device.cpu_has_native_bf16", lambda: False)
    E._CACHE.clear()
    enc = E.load(tiny_model_dir, device="cpu", precision="auto")
    E._CACHE.clear()
    assert enc.precision == "fp32" and getattr(enc.model, "prepared_precision", None) is None
    assert all(p.dtype == torch.float32 for p in enc.model.parameters())
