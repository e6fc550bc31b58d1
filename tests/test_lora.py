"""Frozen layers and LoRA: frozen weights bitwise unchanged, the optimizer sees only trainable ones;
LoRA adapters load in peft onto the transformers base with bertcli's logits, and merge-lora equals
adapter + base. Tiny random models (hidden 32, 2 layers) of BERT and other families."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import finetune_options

pytestmark = pytest.mark.usefixtures("one_thread")
peft = pytest.importorskip("peft", reason="install the dev extra (peft) for the LoRA tests")

TEXTS = ["a lovely , moving film", "awful acting and a dull plot", "fine", "the worst movie of the year"]


def sentiment_tsv(path: Path, n: int = 32) -> Path:
    good, bad = "a lovely warm funny film", "an awful dull boring mess"
    rows = ["text\tlabel"] + [f"{good if i % 2 else bad} {i}\t{'pos' if i % 2 else 'neg'}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return sentiment_tsv(tmp_path_factory.mktemp("data") / "train.tsv")


def train_opts(model, tmp_path, data, **fields):
    return finetune_options(model, tmp_path, train=str(data), dev=str(data), text_column="text",
                            label_column="label", **fields)


# ------------------------------------------------------------ frozen layers
@pytest.mark.parametrize("how", [dict(freeze_embeddings=True, freeze_layers=1), dict(freeze_encoder=True)])
def test_frozen_parameters_unchanged_and_not_in_the_optimizer(how, tiny_model_dir, tmp_path, data, monkeypatch):
    import torch

    from bertcli.checkpoint import load_checkpoint
    from bertcli.tasks.classification import finetune

    seen: list[set[int]] = []
    trainable: set[int] = set()
    real = torch.optim.AdamW

    class Recording(real):
        def __init__(self, groups, *args, **kwargs):
            seen.append({id(p) for g in groups for p in g["params"]})
            super().__init__(groups, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    from bertcli.lora import AdaptedTask

    build = AdaptedTask.build_model

    def recording_build(self):
        model = build(self)
        trainable.update(id(p) for p in model.parameters() if p.requires_grad)
        return model

    monkeypatch.setattr(AdaptedTask, "build_model", recording_build)
    summary = finetune(train_opts(tiny_model_dir, tmp_path, data, epochs=2, **how))
    assert seen and seen[0] == trainable  # the optimizer got exactly the trainable parameters
    start = load_checkpoint(tiny_model_dir).state
    end = load_checkpoint(tmp_path / "run").state
    if how.get("freeze_encoder"):
        frozen = [k for k in start if k.startswith("bert.")]
        trained = ["classifier.weight"]
    else:
        frozen = [k for k in start if k.startswith(("bert.embeddings.", "bert.layers.0."))]
        trained = [k for k in start if k.startswith("bert.layers.1.")] + ["classifier.weight"]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)  # bitwise
    assert all(not torch.equal(start[k], end[k]) for k in trained if k in start)
    assert summary["trainable_parameters"] == sum(end[k].numel() for k in end
                                                  if k not in frozen and not k.startswith(("mlm.", "nsp.")))


def test_freeze_layers_beyond_the_model_and_lora_with_freeze_are_errors(tiny_model_dir, tmp_path, data):
    from bertcli.errors import ConfigError
    from bertcli.tasks.classification import finetune

    with pytest.raises(ConfigError, match="--freeze-layers 5: the model has 2 layers"):
        finetune(train_opts(tiny_model_dir, tmp_path, data, freeze_layers=5))
    with pytest.raises(ConfigError, match="already freezes the whole encoder"):
        train_opts(tiny_model_dir, tmp_path, data, lora_rank=4, freeze_encoder=True).validate()
    with pytest.raises(ConfigError, match="--lora-targets 'qkv,ffn'"):
        train_opts(tiny_model_dir, tmp_path, data, lora_rank=4, lora_targets="qkv,ffn").validate()


# ------------------------------------------------------------ LoRA in PEFT's format
def peft_logits(base: Path, adapter: Path, texts: list[str], num_labels: int):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=num_labels)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    tok = AutoTokenizer.from_pretrained(str(adapter))
    with torch.no_grad():
        return model(**tok(texts, return_tensors="pt", padding=True)).logits.numpy()


def lora_run(base: Path, tmp_path: Path, data: Path, **fields) -> Path:
    from bertcli.tasks.classification import finetune

    finetune(train_opts(base, tmp_path, data, lora_rank=4, lora_alpha=8.0, lora_dropout=0.0, **fields))
    return tmp_path / "run"


@pytest.fixture(scope="module")
def bert_lora(tiny_model_dir, tmp_path_factory, data) -> Path:
    return lora_run(tiny_model_dir, tmp_path_factory.mktemp("lora"), data)


def test_adapter_directory_has_peft_names(bert_lora, tiny_model_dir):
    from bertcli.checkpoint import read_weights

    assert not (bert_lora / "config.json").exists() and not (bert_lora / "model.safetensors").exists()
    cfg = json.loads((bert_lora / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS" and cfg["r"] == 4
    assert Path(cfg["base_model_name_or_path"]) == Path(tiny_model_dir).resolve()
    assert cfg["modules_to_save"] == ["classifier"]  # the checkpoint has a pooler: it stays frozen
    tensors = read_weights(bert_lora / "adapter_model.safetensors")
    for i in range(2):
        for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "intermediate.dense", "output.dense"):
            name = f"base_model.model.bert.encoder.layer.{i}.{m}"
            assert tensors[name + ".lora_A.weight"].shape[0] == 4
            assert tensors[name + ".lora_B.weight"].shape[1] == 4
            assert tensors[name + ".lora_B.weight"].abs().sum() > 0  # trained away from the zero init
    heads = {k for k in tensors if "lora_" not in k}
    assert heads == {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}


def test_peft_loads_the_adapter_with_bertcli_logits(bert_lora, tiny_model_dir):
    from bertcli.predict import load_classifier

    clf = load_classifier(bert_lora, device="cpu", precision="fp32")
    ours, _ = clf.logits(TEXTS)
    theirs = peft_logits(tiny_model_dir, bert_lora, TEXTS, 2)
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert clf.id2label == {0: "neg", 1: "pos"}


def test_merge_lora_equals_adapter_plus_base(bert_lora, tiny_model_dir, tmp_path, cli):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertcli.checkpoint import load_checkpoint, read_weights
    from bertcli.predict import load_classifier

    out = tmp_path / "merged"
    assert cli("merge-lora", "--adapter", bert_lora, "--out", out, "--quiet").exit_code == 0
    merged = read_weights(out / "model.safetensors")
    base = read_weights(Path(tiny_model_dir) / "model.safetensors")
    adapter = read_weights(bert_lora / "adapter_model.safetensors")
    scale = 8.0 / 4
    for i in range(2):
        for m in ("attention.self.key", "intermediate.dense"):
            a = adapter[f"base_model.model.bert.encoder.layer.{i}.{m}.lora_A.weight"]
            b = adapter[f"base_model.model.bert.encoder.layer.{i}.{m}.lora_B.weight"]
            w = f"bert.encoder.layer.{i}.{m}.weight"
            assert torch.allclose(merged[w], base[w] + scale * b @ a, atol=1e-7)
    assert torch.equal(merged["classifier.weight"], adapter["base_model.model.classifier.weight"])
    assert load_checkpoint(out).bertcli["task"] == "classification"
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        theirs = hf(**tok(TEXTS, return_tensors="pt", padding=True)).logits.numpy()
    ours, _ = load_classifier(bert_lora, device="cpu", precision="fp32").logits(TEXTS)
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_predict_and_embed_take_the_adapter_directory(bert_lora, tmp_path, cli):
    src = tmp_path / "in.tsv"
    src.write_text("text\n" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    res = cli("predict", "--model", bert_lora, src, "--json", "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["text"] for r in rows] == TEXTS and all(r["label"] in ("neg", "pos") for r in rows)
    res = cli("embed", "--model", bert_lora, "--device", "cpu", "--quiet", TEXTS[0])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout.splitlines()[0])["embedding"]) == 32


def test_missing_base_is_a_located_error(bert_lora, tmp_path, cli):
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(bert_lora, moved, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    res = cli("predict", "--model", moved, str(tmp_path / "x.tsv"))
    assert res.exit_code == 1 and "adapter_config.json" in res.stderr and "gone" in res.stderr


def test_lora_resume_after_interrupt_matches_uninterrupted(tiny_model_dir, tmp_path, data, monkeypatch):
    import dataclasses
    import signal

    from bertcli.checkpoint import read_weights
    from bertcli.tasks.classification import SequenceClassificationTask, finetune
    from bertcli.train import TrainingInterrupted

    def opts(out):
        return dataclasses.replace(train_opts(tiny_model_dir, tmp_path, data, epochs=2, lora_rank=4), out=str(out))

    finetune(opts(tmp_path / "a"))
    original = SequenceClassificationTask.compute_loss
    calls = {"n": 0}

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SequenceClassificationTask, "compute_loss", interrupting)
    with pytest.raises(TrainingInterrupted):
        finetune(opts(tmp_path / "b"))
    monkeypatch.setattr(SequenceClassificationTask, "compute_loss", original)
    finetune(dataclasses.replace(opts(tmp_path / "b"), resume="auto"))
    a = read_weights(tmp_path / "a" / "checkpoints" / "step-8" / "adapter_model.safetensors")
    b = read_weights(tmp_path / "b" / "checkpoints" / "step-8" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


# ------------------------------------------------------------ other families
SHAPE = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=130)
EXTRA = {"roberta": dict(type_vocab_size=1), "distilbert": dict(type_vocab_size=0),
         "albert": dict(embedding_size=16, num_layers=3, num_hidden_groups=1), "electra": dict(embedding_size=16)}


def family_model(out: Path, tokenizer_dir: Path, family: str) -> Path:
    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.heads import BertForPreTraining
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    cfg = BertConfig.for_family(family, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                **{**SHAPE, **EXTRA[family]})
    torch.manual_seed(0)
    return save_checkpoint(out, BertForPreTraining(cfg, nsp=False).state_dict(), cfg, tok, task="pretraining")


@pytest.mark.parametrize("family", ["roberta", "distilbert", "albert", "electra"])
def test_family_adapter_loads_in_peft(family, tmp_path, minilm_dir, data):
    from bertcli.predict import load_classifier

    base = family_model(tmp_path / "base", minilm_dir, family)
    adapter = lora_run(base, tmp_path, data, lora_targets="qkv,down")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if family == "albert":  # a pooler the base lacks trains with the head
        assert cfg["modules_to_save"] == ["albert.pooler", "classifier"]
    ours, _ = load_classifier(adapter, device="cpu", precision="fp32").logits(TEXTS)
    theirs = peft_logits(base, adapter, TEXTS, 2)
    assert ours == pytest.approx(theirs, abs=1e-5)


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_token_and_span_adapters_load_in_peft(task, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from test_family_commands import _conll, _squad
    from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification, AutoTokenizer

    from bertcli.checkpoint import load_checkpoint, load_into
    from bertcli.heads import BertForQuestionAnswering, BertForTokenClassification
    from bertcli.tasks.classification import finetune

    ner = task == "token-classification"
    src = _conll(tmp_path / "ner.conll", 8) if ner else _squad(tmp_path / "qa.json", 8)
    extra = {} if ner else dict(doc_stride=16, max_query_length=16)
    finetune(finetune_options(tiny_model_dir, tmp_path, task=task, train=str(src), lora_rank=4, lora_dropout=0.0,
                              **extra))
    adapter = tmp_path / "run"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["task_type"] == ("TOKEN_CLS" if ner else "QUESTION_ANS")
    assert cfg["modules_to_save"] == ["classifier" if ner else "qa_outputs"]
    ckpt = load_checkpoint(adapter)
    ours = (BertForTokenClassification(ckpt.config, ckpt.state["classifier.weight"].shape[0]) if ner
            else BertForQuestionAnswering(ckpt.config))
    load_into(ours, ckpt.state, str(adapter))
    auto = AutoModelForTokenClassification if ner else AutoModelForQuestionAnswering
    kwargs = {"num_labels": ours.classifier.out_features} if ner else {}
    theirs = PeftModel.from_pretrained(auto.from_pretrained(str(tiny_model_dir), **kwargs), str(adapter)).eval()
    x = AutoTokenizer.from_pretrained(str(adapter))(["where did anna fly ?", "anna flew to rome ."],
                                                     return_tensors="pt", padding=True)
    with torch.no_grad():
        got = ours.eval()(x["input_ids"], x["attention_mask"], x["token_type_ids"])
        want = theirs(**x)
    pairs = [(got, want.logits)] if ner else [(got[0], want.start_logits), (got[1], want.end_logits)]
    for a, b in pairs:
        assert torch.allclose(a, b, atol=1e-5)


def test_an_adapter_made_by_peft_reads_in_bertcli(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertcli.predict import load_classifier

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=3)
    lora = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=6, target_modules=["query", "value"],
                      init_lora_weights=False)  # random B: a non-zero update
    model = get_peft_model(base, lora).eval()
    model.save_pretrained(str(tmp_path / "adapter"))
    assert not (tmp_path / "adapter" / "tokenizer.json").exists()  # the tokenizer comes from the base
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        theirs = model(**tok(TEXTS, return_tensors="pt", padding=True)).logits.numpy()
    clf = load_classifier(tmp_path / "adapter", device="cpu", precision="fp32")
    ours, _ = clf.logits(TEXTS)
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_albert_shared_layers_freeze_only_as_a_whole(tmp_path, minilm_dir, data):
    from bertcli.errors import ConfigError
    from bertcli.tasks.classification import finetune

    base = family_model(tmp_path / "base", minilm_dir, "albert")  # 3 layers sharing one set of weights
    with pytest.raises(ConfigError, match="shares layer weights"):
        finetune(train_opts(base, tmp_path, data, freeze_layers=1))


def test_unsupported_adapter_features_are_located_errors(bert_lora, tmp_path):
    import shutil

    from bertcli.checkpoint import load_checkpoint
    from bertcli.errors import CheckpointError

    moved = tmp_path / "adapter"
    shutil.copytree(bert_lora, moved, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError, match=r"adapter_config\.json: 'use_dora'"):
        load_checkpoint(moved)
    (moved / "adapter_config.json").write_text(json.dumps({**cfg, "r": 0}))
    with pytest.raises(CheckpointError, match="'r' must be a positive integer"):
        load_checkpoint(moved)


def test_lora_on_top_of_an_adapter(bert_lora, tmp_path, data):
    from bertcli.checkpoint import load_checkpoint
    from bertcli.predict import load_classifier

    second = lora_run(bert_lora, tmp_path, data, lora_targets="out")
    assert json.loads((second / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        bert_lora.resolve())
    first, both = load_checkpoint(bert_lora).state, load_checkpoint(second).state
    assert first["bert.layers.0.attn.qkv.weight"].equal(both["bert.layers.0.attn.qkv.weight"])
    assert not first["bert.layers.0.attn.out.weight"].equal(both["bert.layers.0.attn.out.weight"])
    logits, _ = load_classifier(second, device="cpu", precision="fp32").logits(TEXTS)
    assert logits.shape == (len(TEXTS), 2)
