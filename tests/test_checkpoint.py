"""Checkpoint directories: exact round trips, safe refusal of corrupt or hostile files."""

from __future__ import annotations

import json
import pickle
import shutil
import struct

import pytest
import torch

from bertcli.checkpoint import (
    WEIGHTS_NAME,
    architecture_for,
    clean_leftovers,
    heads_in,
    hf_to_ours,
    load_checkpoint,
    load_encoder,
    load_into,
    load_tokenizer,
    ours_to_hf,
    read_safetensors_header,
    save_checkpoint,
)
from bertcli.config import BertConfig
from bertcli.errors import CheckpointError, TokenizerError
from bertcli.heads import BertForPreTraining, BertForSequenceClassification
from bertcli.model import BertModel
from bertcli.tokenizer import Tokenizer

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)


@pytest.fixture(scope="module")
def tok(minilm_dir) -> Tokenizer:
    return Tokenizer.load(minilm_dir)


@pytest.fixture
def small_ckpt(tmp_path):
    """A tiny model with a 99-token vocabulary and no tokenizer (fast to write and corrupt)."""
    cfg = BertConfig(vocab_size=99, **TINY)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg)
    return save_checkpoint(tmp_path / "small", model.state_dict(), cfg, task="pretraining"), model


# --------------------------------------------------------------------------- round trips


def test_save_then_load_is_bit_identical(tmp_path, tok):
    cfg = BertConfig(vocab_size=tok.vocab_size, **TINY)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg)
    state = model.state_dict()
    path = save_checkpoint(tmp_path / "m", state, cfg, tok, task="pretraining", bertcli={"note": "x"})
    names = {p.name for p in path.iterdir()}
    assert {"config.json", WEIGHTS_NAME, "tokenizer.json", "vocab.txt", "tokenizer_config.json",
            "special_tokens_map.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    ckpt = load_checkpoint(path)
    assert ckpt.config == cfg
    assert set(ckpt.state) == set(state)
    for k, v in state.items():
        assert ckpt.state[k].dtype == v.dtype and torch.equal(ckpt.state[k], v), k
    assert ckpt.bertcli == {"format_version": 1, "task": "pretraining", "note": "x"}
    assert ckpt.hf_config["architectures"] == ["BertForPreTraining"]
    assert ckpt.hf_config["tie_word_embeddings"] is True
    # saving what we loaded gives the same bytes of weights
    again = save_checkpoint(tmp_path / "m2", ckpt.state, ckpt.config, Tokenizer.load(path), task="pretraining")
    assert (again / WEIGHTS_NAME).read_bytes() == (path / WEIGHTS_NAME).read_bytes()
    assert (again / "vocab.txt").read_bytes() == (path / "vocab.txt").read_bytes()


def test_load_encoder_gives_same_outputs(tmp_path, tok):
    cfg = BertConfig(vocab_size=tok.vocab_size, **TINY)
    torch.manual_seed(1)
    model = BertForPreTraining(cfg).eval()
    path = save_checkpoint(tmp_path / "m", model.state_dict(), cfg, tok)
    enc, tok2, ckpt = load_encoder(path, device="cpu", with_pooler=True)
    assert not enc.training and enc.pooler is not None
    ids = torch.tensor([tok2.encode("hello there, world").ids])
    with torch.no_grad():
        assert torch.equal(enc(ids), model.bert(ids))


def test_name_mapping_round_trip():
    cfg = BertConfig(vocab_size=50, **TINY)
    state = BertForPreTraining(cfg).state_dict()
    hf = ours_to_hf(state, prefix=True)
    assert "bert.encoder.layer.1.attention.self.query.weight" in hf
    assert "cls.predictions.transform.LayerNorm.weight" in hf and "cls.seq_relationship.bias" in hf
    back = hf_to_ours(hf)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    plain = ours_to_hf({k: v for k, v in state.items() if k.startswith("bert.")}, prefix=False)
    assert "embeddings.word_embeddings.weight" in plain
    with pytest.raises(CheckpointError, match="unexpected tensor names.*foo.weight"):
        hf_to_ours({"foo.weight": torch.zeros(1)}, source="w")
    partial = {k: v for k, v in hf.items() if "layer.0.attention.self.key" not in k}
    with pytest.raises(CheckpointError, match="layer 0 lacks attention.self.key"):
        hf_to_ours(partial)


def test_heads_and_architecture():
    cfg = BertConfig(vocab_size=50, **TINY)
    pt = BertForPreTraining(cfg).state_dict()
    assert heads_in(pt) == {"pooler", "mlm", "nsp"}
    assert architecture_for(pt) == "BertForPreTraining"
    assert architecture_for(BertForPreTraining(cfg, nsp=False).state_dict()) == "BertForMaskedLM"
    sc = BertForSequenceClassification(cfg, 2).state_dict()
    assert architecture_for(sc) == "BertForSequenceClassification"
    assert architecture_for({f"bert.{k}": v for k, v in BertModel(cfg).state_dict().items()}) == "BertModel"


def test_sentence_files_round_trip(tmp_path):
    cfg = BertConfig(vocab_size=50, **TINY)
    state = {f"bert.{k}": v for k, v in BertModel(cfg, with_pooler=False).state_dict().items()}
    path = save_checkpoint(tmp_path / "s", state, cfg,
                           sentence={"pooling": "mean", "normalize": True, "max_seq_length": 48})
    ckpt = load_checkpoint(path)
    assert ckpt.sentence == {"pooling": "mean", "normalize": True, "max_seq_length": 48}
    assert ckpt.bertcli["pooling"] == "mean"


def test_real_minilm_sentence_config(minilm_dir):
    ckpt = load_checkpoint(minilm_dir)
    assert ckpt.sentence == {"pooling": "mean", "normalize": True, "max_seq_length": 256}
    assert ckpt.heads == {"pooler"}


def test_overwrite_is_atomic_and_leftovers_are_cleaned(tmp_path, small_ckpt):
    path, model = small_ckpt
    cfg = BertConfig(vocab_size=99, **TINY)

    def boom(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, BertForPreTraining(cfg).state_dict(), cfg, before_commit=boom)
    # the old checkpoint is intact and no temporary directory is left
    assert torch.equal(load_checkpoint(path).state["bert.embeddings.word.weight"],
                       model.state_dict()["bert.embeddings.word.weight"])
    assert [p.name for p in path.parent.iterdir()] == ["small"]
    # an interrupted write's leftovers are removed; a half-renamed old checkpoint is restored
    (path.parent / ".small2.tmp-abc").mkdir()
    path.rename(path.parent / ".small.old-123")
    removed = clean_leftovers(path.parent)
    assert [p.name for p in removed] == [".small2.tmp-abc"]
    assert path.is_dir() and load_checkpoint(path).config == cfg


# --------------------------------------------------------------------------- refusing bad input


def _write_header(path, header: dict, data: bytes = b"", claimed: int | None = None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if claimed is None else claimed) + raw + data)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda p: p.write_bytes(b"abc"), r"only 3 bytes\); the file is truncated"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "corrupt safetensors header"),
        (lambda p: _write_header(p, {}, claimed=10 * 2**30), r"claims 10737418240 bytes but the file has"),
        (lambda p: _write_header(p, {"w": {"dtype": "F32", "shape": [50_000, 50_000],
                                         "data_offsets": [0, 10_000_000_000]}}), "lie outside the 0-byte data"),
        (lambda p: _write_header(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
         r"needs 8 bytes but its offsets span 4"),
        (lambda p: _write_header(p, {"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
         "unknown dtype"),
        (lambda p: _write_header(p, {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                                     "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, b"\0" * 3),
         "overlaps"),
        (lambda p: _write_header(p, {"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0\0"),
         "1 trailing bytes"),
        (lambda p: p.write_bytes(struct.pack("<Q", 9) + b'{"a": 1, '), "invalid JSON"),
    ],
)
def test_safetensors_header_validation(tmp_path, make, pattern):
    f = tmp_path / WEIGHTS_NAME
    make(f)
    with pytest.raises(CheckpointError, match=pattern):
        read_safetensors_header(f)


def test_duplicate_tensor_names_refused(tmp_path):
    f = tmp_path / WEIGHTS_NAME
    raw = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0")
    with pytest.raises(CheckpointError, match="tensor 'a' appears twice"):
        read_safetensors_header(f)


def test_truncated_weights_refused(small_ckpt):
    path, _ = small_ckpt
    w = path / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME}.*(outside|truncated)"):
        load_checkpoint(path)


def test_missing_pieces(tmp_path, small_ckpt):
    path, _ = small_ckpt
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(path / "config.json")
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"no {WEIGHTS_NAME}"):
        load_checkpoint(path)
    assert load_checkpoint(path, weights=False).state == {}
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(path)


def test_bad_config_json(small_ckpt):
    path, _ = small_ckpt
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        load_checkpoint(path)
    (path / "config.json").write_text('{"model_type": "bert",')
    with pytest.raises(CheckpointError, match="config.json, line 1.*invalid JSON"):
        load_checkpoint(path)
    (path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="model_type is 'gpt2'"):
        load_checkpoint(path)


def test_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "UNPICKLED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(BertConfig(vocab_size=99, **TINY).to_hf()))
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*never loads pickle.*save_pretrained"):
        load_checkpoint(d)
    assert not marker.exists()


def test_shape_mismatches_name_both_numbers(small_ckpt):
    path, _ = small_ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["vocab_size"] = 120
    cfg["max_position_embeddings"] = 80
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "vocab_size=120" in msg and "has 99 rows" in msg
    assert "max_position_embeddings=80" in msg and "has 64 rows" in msg
    cfg.update(vocab_size=99, max_position_embeddings=64, num_hidden_layers=3)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing 12 encoder tensors"):
        load_checkpoint(path)
    cfg.update(num_hidden_layers=1)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="beyond num_hidden_layers=1"):
        load_checkpoint(path)


def test_tokenizer_larger_than_embedding(tmp_path, minilm_dir, small_ckpt):
    path, _ = small_ckpt
    Tokenizer.load(minilm_dir).save(path)
    with pytest.raises(TokenizerError, match="30522 tokens but the model has 99 embedding rows"):
        load_encoder(path)
    with pytest.raises(TokenizerError, match="30522 tokens but the model has 99"):
        load_tokenizer(path, 99)


def test_load_into_reports_missing_and_mismatched(small_ckpt):
    path, _ = small_ckpt
    ckpt = load_checkpoint(path)
    cfg = ckpt.config
    model = BertForSequenceClassification(cfg, 3)
    fresh = load_into(model, ckpt.state, "ck", allow_missing=("classifier.",))
    assert sorted(fresh) == ["classifier.bias", "classifier.weight"]
    with pytest.raises(CheckpointError, match="lacks 2 tensors this model needs, e.g. classifier"):
        load_into(BertForSequenceClassification(cfg, 3), ckpt.state, "ck")
    state = dict(ckpt.state, **{"classifier.weight": torch.zeros(5, 32), "classifier.bias": torch.zeros(5)})
    with pytest.raises(CheckpointError, match=r"classifier.weight has shape \(5, 32\) but the model expects \(3, 32\)"):
        load_into(BertForSequenceClassification(cfg, 3), state, "ck")


def test_malformed_config_blocks(small_ckpt):
    path, _ = small_ckpt
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "bertcli": "yes"}))
    with pytest.raises(CheckpointError, match="'bertcli' must be a JSON object"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({**cfg, "id2label": {"neg": "0"}}))
    with pytest.raises(CheckpointError, match="keys of 'id2label' must be label numbers"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({**cfg, "id2label": {"0": "neg", "1": "pos"}}))
    assert load_checkpoint(path).id2label == {0: "neg", 1: "pos"}


def test_tokenizer_config_must_be_an_object(tmp_path, minilm_dir):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text("[]")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: expected a JSON object"):
        Tokenizer.load(tmp_path)
