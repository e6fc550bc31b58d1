"""Distillation: the losses on hand-computed cases, init --from --layers, finetune --teacher (logits,
unlabelled rows, sentence embeddings and their cache), pretrain --teacher, and the errors."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from bertcli.errors import CheckpointError, ConfigError, TokenizerError
from tests.conftest import finetune_options, make_tiny_model, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
GOOD = "good great fine nice happy love".split()
BAD = "bad awful poor sad hate ugly".split()
FILL = "the a film movie story actor plot music scene city".split()


# ============================================================ losses
def test_kd_loss_hand_computed():
    import torch

    from bertcli.distill import kd_loss

    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2)
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(kd_loss(s, t, 1.0)) == pytest.approx(want, rel=1e-6)
    # T = 2: p_t = softmax(ln3 / 2, 0) = (sqrt3, 1) / (sqrt3 + 1); times T^2 = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    want2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(want2, rel=1e-6)
    # identical logits: 0; the mean over rows; a mask drops rows
    assert float(kd_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)
    two_s, two_t = torch.cat([s, t]), torch.cat([t, t])
    assert float(kd_loss(two_s, two_t, 1.0)) == pytest.approx(want / 2, rel=1e-6)
    assert float(kd_loss(two_s, two_t, 1.0, mask=torch.tensor([True, False]))) == pytest.approx(want, rel=1e-6)
    assert float(kd_loss(two_s, two_t, 1.0, mask=torch.tensor([False, False]))) == 0.0
    # per token: (B, T, C) with a (B, T) mask
    tok_s, tok_t = two_s.view(1, 2, 2), two_t.view(1, 2, 2)
    assert float(kd_loss(tok_s, tok_t, 1.0, mask=torch.tensor([[True, False]]))) == pytest.approx(want, rel=1e-6)
    # the gradient flows to the student only
    s_req = s.clone().requires_grad_(True)
    kd_loss(s_req, t, 1.0).backward()
    # d KL / d s = p_s - p_t = (0.5 - 0.75, 0.5 - 0.25)
    assert s_req.grad[0].tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)


def test_cosine_mse_and_mix_hand_computed():
    import torch

    from bertcli.distill import cosine_loss, mix, mse_loss

    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, -3.0]]])  # (1, 3, 2); the last token is padding
    t = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, 7.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert float(cosine_loss(s, t, mask)) == pytest.approx((0.0 + (1 - 1 / math.sqrt(2))) / 2, rel=1e-6)
    assert float(cosine_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))) == pytest.approx(1.0)
    assert float(mse_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))) == pytest.approx(2.5)
    assert float(mix(torch.tensor(2.0), torch.tensor(10.0), 0.3)) == pytest.approx(0.3 * 2 + 0.7 * 10)
    assert float(mix(torch.tensor(2.0), None, 0.3)) == pytest.approx(2.0)


# ============================================================ students
def test_parse_layers():
    from bertcli.distill import default_layers, parse_layers

    assert parse_layers("0, 2,4", 6) == (0, 2, 4)
    assert parse_layers(None, 6) == (0, 2, 4) == default_layers(6)
    assert default_layers(5) == (0, 2, 4) and default_layers(1) == (0,)
    for bad, needle in (("0,9", "layer 9 does not exist"), ("2,0", "increasing"), ("1,1", "increasing"),
                        ("a,b", "integers"), ("", "comma-separated"), ("0,,2", "comma-separated"),
                        ("-1", "does not exist")):
        with pytest.raises(ConfigError, match=needle):
            parse_layers(bad, 6)


def test_init_from_layers_copies_the_right_tensors(cli, minilm_dir, tmp_path):
    from bertcli.checkpoint import load_checkpoint

    teacher = make_tiny_model(tmp_path / "t4", minilm_dir, num_layers=4, seed=3)
    result = cli("init", "--from", teacher, "--layers", "1,3", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    t, s = load_checkpoint(teacher), load_checkpoint(tmp_path / "s")
    assert s.config.num_layers == 2 and s.bertcli["student_layers"] == [1, 3]
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_hidden_layers"] == 2
    for new, old in ((0, 1), (1, 3)):
        own = [k for k in s.state if k.startswith(f"bert.layers.{new}.")]
        assert own
        for k in own:
            assert s.state[k].equal(t.state[k.replace(f"layers.{new}.", f"layers.{old}.")]), k
    rest = [k for k in t.state if not k.startswith("bert.layers.")]
    assert {k for k in s.state if not k.startswith("bert.layers.")} == set(rest)
    assert all(s.state[k].equal(t.state[k]) for k in rest)  # embeddings, pooler, MLM and NSP heads
    # --student-layers is the same option; the default is every other layer
    assert cli("init", "--from", teacher, "--student-layers", "0", "--out", tmp_path / "s1").exit_code == 0
    assert cli("init", "--from", teacher, "--out", tmp_path / "s2").exit_code == 0
    assert load_checkpoint(tmp_path / "s2").bertcli["student_layers"] == [0, 2]


def test_init_from_keeps_sentence_settings(cli, minilm_dir, tmp_path):
    from bertcli.checkpoint import load_checkpoint

    result = cli("init", "--from", minilm_dir, "--layers", "0,5", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    s = load_checkpoint(tmp_path / "s")
    assert s.config.num_layers == 2 and s.sentence["normalize"] is True and s.sentence["pooling"] == "mean"
    assert s.state["bert.layers.1.attn.qkv.weight"].equal(load_checkpoint(minilm_dir).state["bert.layers.5.attn.qkv.weight"])


def test_init_from_errors(cli, minilm_dir, tiny_model_dir, tmp_path):
    one_error_line(cli("init", "--from", tiny_model_dir, "--layers", "0,2", "--out", tmp_path / "a"),
                   "--layers '0,2'", "layer 2 does not exist", "2 layers")
    one_error_line(cli("init", "--from", tiny_model_dir, "--layers", "x", "--out", tmp_path / "b"), "integers")
    for argv, needle in ((["--layers", "0", "--tokenizer", minilm_dir], "give --from"),
                         (["--from", tiny_model_dir, "--tokenizer", minilm_dir], "drop --tokenizer"),
                         ([], "--tokenizer DIR is required")):
        r = cli("init", *argv, "--out", tmp_path / "c")
        flat = " ".join(r.stderr.replace("│", " ").split())  # rich wraps the message in a box
        assert r.exit_code == 2 and needle in flat, r.output  # usage errors


def test_albert_shared_layers_refused():
    from bertcli.config import BertConfig
    from bertcli.distill import cut_state

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, family="albert",
                     embedding_size=16, num_hidden_groups=1)
    with pytest.raises(ConfigError, match="share 1 set"):
        cut_state({}, cfg, (0, 2), "albert-dir")


def test_vocab_mismatch_is_named():
    from bertcli.distill import check_same_vocab

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    check_same_vocab(Tok({"a": 0, "b": 1}), Tok({"a": 0, "b": 1}), "s", "t")
    with pytest.raises(TokenizerError, match="'b' is id 1 in s but 0 in t"):
        check_same_vocab(Tok({"a": 1, "b": 1}), Tok({"a": 1, "b": 0}), "s", "t")
    with pytest.raises(TokenizerError, match="'c' is only in t"):
        check_same_vocab(Tok({"a": 0}), Tok({"a": 0, "c": 1}), "s", "t")


# ============================================================ finetune --teacher
def sentiment(path: Path, n: int, seed: int, labelled: bool = True) -> Path:
    rng = random.Random(seed)
    rows = ["text\tlabel" if labelled else "text"]
    for _ in range(n):
        y = rng.randint(0, 1)
        words = rng.sample(FILL, 3) + [rng.choice(GOOD if y else BAD)]
        rng.shuffle(words)
        rows.append(" ".join(words) + (f"\t{'pos' if y else 'neg'}" if labelled else ""))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def random_classifier(out: Path, tokenizer_dir: Path, seed: int, head_std: float) -> Path:
    """A tiny random 2-layer sentiment classifier (labels neg, pos)."""
    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.heads import BertForSequenceClassification
    from bertcli.tokenizer import Tokenizer
    from tests.conftest import TINY

    tok = Tokenizer.load(tokenizer_dir)
    cfg = BertConfig(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, **TINY)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg, 2)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, head_std)
    return save_checkpoint(out, model.state_dict(), cfg, tok, task="classification",
                           hf_extra={"id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1},
                                     "problem_type": "single_label_classification"})


@pytest.fixture(scope="module")
def cls_teacher(tmp_path_factory, minilm_dir):
    """A classifier teacher with a large random head (logits of a few units), and the toy data."""
    d = tmp_path_factory.mktemp("cls_teacher")
    sentiment(d / "train.tsv", 64, 0)
    return random_classifier(d / "teacher", minilm_dir, 11, 3.0), d


def _kl_to_teacher(student_dir, teacher_dir, texts, T=2.0) -> float:
    import torch

    from bertcli.checkpoint import load_checkpoint, load_into, load_tokenizer
    from bertcli.distill import kd_loss
    from bertcli.heads import BertForSequenceClassification
    from bertcli.tasks.classification import batched_logits

    out = []
    for d in (student_dir, teacher_dir):
        ck = load_checkpoint(d)
        m = BertForSequenceClassification(ck.config, 2)
        load_into(m, ck.state, str(d))
        tok = load_tokenizer(d)
        ids, types, _ = tok.encode_ids(texts, max_length=32)
        out.append(torch.from_numpy(batched_logits(m, ids, types, pad_id=tok.pad_id, batch_size=16, device="cpu")))
    return float(kd_loss(out[0], out[1], T))


def test_distilled_classifier_moves_towards_the_teacher(cls_teacher, tmp_path):
    from bertcli.tasks.classification import finetune

    teacher, d = cls_teacher
    random_classifier(tmp_path / "student", teacher, 12, 0.5)
    texts = [line.split("\t")[0] for line in (d / "train.tsv").read_text().splitlines()[1:]]
    before = _kl_to_teacher(tmp_path / "student", teacher, texts)
    opts = finetune_options(tmp_path / "student", tmp_path, train=str(d / "train.tsv"), text_column="text",
                            label_column="label", teacher=str(teacher), alpha=1.0, temperature=2.0, epochs=4)
    summary = finetune(opts)
    after = _kl_to_teacher(tmp_path / "run", teacher, texts)
    assert after < before * 0.5, (before, after)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x and '"eval"' not in x]
    assert losses[-1] < losses[0], losses
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["bertcli"]["teacher"] == str(teacher) and saved["bertcli"]["alpha"] == 1.0
    assert saved["id2label"] == {"0": "neg", "1": "pos"} and summary["examples"] == {"train": 64}


def test_unlabelled_rows_learn_from_the_teacher_only(cls_teacher, tmp_path):
    import torch

    from bertcli.distill import kd_loss
    from bertcli.tasks.classification import batched_logits
    from bertcli.tasks.distillation import build_finetune_task
    from bertcli.train import make_generator

    teacher, d = cls_teacher
    unl = sentiment(tmp_path / "unl.tsv", 10, 7, labelled=False)
    opts = finetune_options(teacher, tmp_path, train=str(d / "train.tsv"), text_column="text", label_column="label",
                            teacher=str(teacher), unlabelled=str(unl), alpha=0.5, temperature=2.0)
    task = build_finetune_task(opts)
    assert task.examples == {"train": 64, "unlabelled": 10}
    labels = task.inner.train_split.labels
    assert (labels[64:] == -100).all() and (labels[:64] >= 0).all()
    # the teacher's logits for the unlabelled rows are the teacher's own predictions on them
    split = task.inner.train_split
    model = task.build_model()
    own = batched_logits(model, split.ids[64:], split.type_ids[64:], pad_id=task.inner.tokenizer.pad_id,
                         batch_size=8, device="cpu")
    assert np.allclose(task.targets[64:], own, atol=1e-5)  # the student starts as the teacher here
    batches = task.train_batches(0, make_generator(0), 80, 0, 1)
    (batch,) = batches
    assert batch["teacher"].shape == (74, 2)
    # a batch of unlabelled rows only: the loss is the teacher term alone
    rows = (batch["labels"] == -100).nonzero().flatten()
    only = {k: v[rows] for k, v in batch.items()}
    model.eval()
    loss, _ = task.compute_loss(model, only, None, torch.device("cpu"))
    with torch.no_grad():
        logits = model(only["input_ids"], only["attention_mask"], only["token_type_ids"])
    assert float(loss.detach()) == pytest.approx(float(kd_loss(logits, only["teacher"], 2.0)), abs=1e-6)
    # a mixed batch: alpha * teacher term + (1 - alpha) * cross-entropy on the labelled rows
    loss, _ = task.compute_loss(model, batch, None, torch.device("cpu"))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    has = batch["labels"] != -100
    ce = torch.nn.functional.cross_entropy(logits[has], batch["labels"][has])
    assert float(loss.detach()) == pytest.approx(0.5 * float(kd_loss(logits, batch["teacher"], 2.0)) + 0.5 * float(ce), abs=1e-5)


def test_regression_and_token_teachers(cls_teacher, minilm_dir, tmp_path):
    import torch

    from bertcli.tasks.classification import finetune
    from bertcli.tasks.distillation import build_finetune_task
    from bertcli.train import make_generator

    model = make_tiny_model(tmp_path / "init", minilm_dir, seed=2)
    rng = random.Random(0)
    rows = ["text\tscore"] + [f"{' '.join(rng.sample(FILL, 4))}\t{rng.uniform(0, 5):.2f}" for _ in range(24)]
    (tmp_path / "reg.tsv").write_text("\n".join(rows) + "\n")
    reg = dict(task="regression", train=str(tmp_path / "reg.tsv"), text_column="text", label_column="score")
    finetune(finetune_options(model, tmp_path, out=str(tmp_path / "reg_teacher"), **reg))
    task = build_finetune_task(finetune_options(model, tmp_path, teacher=str(tmp_path / "reg_teacher"), alpha=1.0,
                                                **reg))
    (batch, *_) = task.train_batches(0, make_generator(0), 8, 0, 1)
    net = task.build_model().eval()
    loss, _ = task.compute_loss(net, batch, None, torch.device("cpu"))
    with torch.no_grad():
        pred = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).squeeze(-1)
    assert float(loss.detach()) == pytest.approx(float(((pred - batch["teacher"].squeeze(-1)) ** 2).mean()), abs=1e-6)

    conll = "\n\n".join("\n".join(f"{w}\t{'B-X' if w in GOOD else 'O'}" for w in rng.sample(FILL + GOOD, 5))
                        for _ in range(16)) + "\n"
    (tmp_path / "ner.conll").write_text(conll)
    ner = dict(task="token-classification", train=str(tmp_path / "ner.conll"))
    finetune(finetune_options(model, tmp_path, out=str(tmp_path / "ner_teacher"), **ner))
    task = build_finetune_task(finetune_options(model, tmp_path, teacher=str(tmp_path / "ner_teacher"), **ner))
    (batch, *_) = task.train_batches(0, make_generator(0), 8, 0, 1)
    keep = batch["teacher_mask"]
    assert keep.equal(batch["labels"] != -100)  # per-token targets at the words' first wordpieces
    assert batch["teacher"].shape == (*batch["input_ids"].shape, 2)
    loss, _ = task.compute_loss(task.build_model(), batch, None, torch.device("cpu"))
    assert math.isfinite(float(loss.detach()))
    # a sequence classifier is not a token teacher
    with pytest.raises(CheckpointError, match="sequence classifier"):
        build_finetune_task(finetune_options(model, tmp_path, teacher=str(cls_teacher[0]), **ner))


def test_finetune_teacher_errors(cls_teacher, tiny_model_dir, minilm_dir, tmp_path):
    from bertcli.tasks.distillation import build_finetune_task

    teacher, d = cls_teacher
    base = dict(train=str(d / "train.tsv"), text_column="text", label_column="label")
    with pytest.raises(CheckpointError, match="no classifier head"):
        build_finetune_task(finetune_options(teacher, tmp_path, teacher=str(tiny_model_dir), **base))
    with pytest.raises(ConfigError, match="give --teacher"):
        build_finetune_task(finetune_options(teacher, tmp_path, unlabelled=str(d / "train.tsv"), **base))
    with pytest.raises(ConfigError, match="--alpha must be between 0"):
        build_finetune_task(finetune_options(teacher, tmp_path, teacher=str(teacher), alpha=1.5, **base))
    with pytest.raises(ConfigError, match="--temperature must be positive"):
        build_finetune_task(finetune_options(teacher, tmp_path, teacher=str(teacher), temperature=0.0, **base))
    # a teacher with another vocabulary: the same tokens, two of them swapped
    other = tmp_path / "other"
    shutil.copytree(teacher, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    vocab_txt = (other / "vocab.txt").read_text().splitlines()
    i, j = vocab_txt.index("cat"), vocab_txt.index("dog")
    vocab_txt[i], vocab_txt[j] = vocab_txt[j], vocab_txt[i]
    (other / "vocab.txt").write_text("\n".join(vocab_txt) + "\n")
    with pytest.raises(TokenizerError, match="different vocabularies"):
        build_finetune_task(finetune_options(teacher, tmp_path, teacher=str(other), **base))


def test_cli_unlabelled_needs_teacher(cli, cls_teacher, tmp_path):
    teacher, d = cls_teacher
    one_error_line(cli("finetune", "--model", teacher, "--train", d / "train.tsv", "--text-column", "text",
                       "--label-column", "label", "--unlabelled", d / "train.tsv", "--out", tmp_path / "o"),
                   "--unlabelled", "--teacher")


# ============================================================ sentence embeddings
def test_embedding_distillation_and_cache(minilm_dir, tmp_path, monkeypatch):
    from bertcli.checkpoint import load_checkpoint, load_into, load_tokenizer
    from bertcli.tasks import distillation
    from bertcli.tasks.classification import finetune
    from bertcli.tasks.sentence_embedding import build_encoder, embed_ids

    teacher = make_tiny_model(tmp_path / "teacher", minilm_dir, seed=5)
    make_tiny_model(tmp_path / "student", minilm_dir, seed=6, num_layers=1)  # far from the teacher
    rng = random.Random(0)
    sentences = [" ".join(rng.sample(FILL + GOOD + BAD, rng.randint(3, 8))) for _ in range(48)]
    (tmp_path / "s.txt").write_text("\n".join(sentences) + "\n\n")

    def mse_to_teacher(student_dir) -> float:
        tok = load_tokenizer(teacher)
        ids, _, _ = tok.encode_ids(sentences, max_length=32)
        vecs = []
        for d in (student_dir, teacher):
            ck = load_checkpoint(d)
            enc = build_encoder(ck.config, "mean")
            load_into(enc, {k: v for k, v in ck.state.items() if k.startswith("bert.") and "pooler" not in k}, str(d))
            vecs.append(embed_ids(enc, ids, pad_id=tok.pad_id, batch_size=16, device="cpu"))
        return float(((vecs[0] - vecs[1]) ** 2).mean())

    before = mse_to_teacher(tmp_path / "student")
    cache = tmp_path / "teacher.safetensors"
    opts = finetune_options(tmp_path / "student", tmp_path, task="sentence-embedding", train=str(tmp_path / "s.txt"),
                            teacher=str(teacher), teacher_cache=str(cache), epochs=6, lr=2e-3)
    summary = finetune(opts)
    assert summary["examples"] == {"train": 48}  # the blank line is skipped
    after = mse_to_teacher(tmp_path / "run")
    assert after < before * 0.5, (before, after)
    assert cache.is_file() and cache.read_bytes()[:8] != b"\x80\x04"  # safetensors, not pickle
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bertcli"]["teacher"] == str(teacher)
    assert (tmp_path / "run" / "modules.json").is_file()
    # the second run reads the cache instead of running the teacher
    calls = []
    real = distillation.embed_ids
    monkeypatch.setattr(distillation, "embed_ids", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = distillation.build_finetune_task(finetune_options(tmp_path / "student", tmp_path, task="sentence-embedding",
                                                              train=str(tmp_path / "s.txt"), teacher=str(teacher),
                                                              teacher_cache=str(cache), out=str(tmp_path / "r2")))
    assert calls == [] and again.targets.shape == (48, 32)
    # other sentences: the stale cache is recomputed
    (tmp_path / "s2.txt").write_text("\n".join(sentences[:10]) + "\n")
    distillation.build_finetune_task(finetune_options(tmp_path / "student", tmp_path, task="sentence-embedding",
                                                      train=str(tmp_path / "s2.txt"), teacher=str(teacher),
                                                      teacher_cache=str(cache), out=str(tmp_path / "r3")))
    assert calls == [1]


def test_embedding_distillation_errors(minilm_dir, tiny_model_dir, tmp_path):
    from bertcli.tasks.distillation import build_finetune_task

    (tmp_path / "s.txt").write_text("a cat\na dog\n")
    base = dict(task="sentence-embedding", train=str(tmp_path / "s.txt"))
    with pytest.raises(ConfigError, match="equal widths"):  # MiniLM is 384 wide, the tiny student 32
        build_finetune_task(finetune_options(tiny_model_dir, tmp_path, teacher=str(minilm_dir), **base))
    with pytest.raises(ConfigError, match="drop --loss cosine"):
        build_finetune_task(finetune_options(tiny_model_dir, tmp_path, teacher=str(tiny_model_dir), loss="cosine",
                                             **base))
    with pytest.raises(ConfigError, match="--dev/--test are scored"):
        build_finetune_task(finetune_options(tiny_model_dir, tmp_path, teacher=str(tiny_model_dir),
                                             dev=str(tmp_path / "s.txt"), **base))
    with pytest.raises(ConfigError, match="safetensors"):
        build_finetune_task(finetune_options(tiny_model_dir, tmp_path, teacher=str(tiny_model_dir),
                                             teacher_cache=str(tmp_path / "c.pkl"), **base))


# ============================================================ pretrain --teacher
def test_pretrain_with_teacher(cli, minilm_dir, tmp_path):
    from bertcli.checkpoint import load_checkpoint

    teacher = make_tiny_model(tmp_path / "teacher", minilm_dir, num_layers=4, seed=4, max_positions=64)
    corpus = ROOT / "examples" / "corpus"
    common = ["--objective", "mlm", "--max-seq-length", "32", "--batch-size", "8", "--lr", "1e-3", "--log-every", "2",
              "--device", "cpu", "--precision", "fp32", "--quiet"]
    # the student cut out of the teacher (layers 1 and 3)
    result = cli("pretrain", corpus, "--teacher", teacher, "--student-layers", "1,3", "--max-steps", "2", *common,
                 "--out", tmp_path / "cut")
    assert result.exit_code == 0, result.output
    student = load_checkpoint(tmp_path / "cut")
    assert student.config.num_layers == 2 and "mlm" in student.heads
    run = (tmp_path / "cut" / "run.yaml").read_text()
    assert "student_layers" in run and "alpha_ce: 5.0" in run
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["bertcli"]["teacher"] == str(teacher)
    # a student of its own (--init-from, far from the teacher): DistilBERT's loss falls
    other = make_tiny_model(tmp_path / "other", minilm_dir, num_layers=2, seed=9, max_positions=64)
    result = cli("pretrain", corpus, "--teacher", teacher, "--init-from", other, "--max-steps", "16",
                 "--alpha-mlm", "0", "--eval-every", "16", *common, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x and '"eval"' not in x]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses


def test_pretrain_teacher_errors(cli, minilm_dir, tmp_path):
    from bertcli.tasks.distillation import PretrainDistillOptions

    teacher = make_tiny_model(tmp_path / "teacher", minilm_dir, seed=4)
    corpus = ROOT / "examples" / "corpus"
    one_error_line(cli("pretrain", corpus, "--teacher", teacher, "--student-layers", "5", "--out", tmp_path / "a"),
                   "--student-layers '5'", "does not exist")
    one_error_line(cli("pretrain", corpus, "--teacher", minilm_dir, "--student-layers", "0", "--out", tmp_path / "b"),
                   "no MLM head", "--alpha-ce 0")
    one_error_line(cli("pretrain", corpus, "--tokenizer", minilm_dir, "--student-layers", "0", "--out",
                       tmp_path / "c"), "--teacher")
    one_error_line(cli("pretrain", corpus, "--teacher", teacher, "--preset", "tiny", "--student-layers", "0",
                       "--out", tmp_path / "d"), "drop --init-from")
    with pytest.raises(ConfigError, match="all 0"):
        PretrainDistillOptions(teacher="t", alpha_ce=0, alpha_mlm=0, alpha_cos=0)
    with pytest.raises(ConfigError, match="--alpha-cos must be zero or positive"):
        PretrainDistillOptions(teacher="t", alpha_cos=-1)


def test_pretrain_loss_is_distilberts_sum(minilm_dir, tmp_path):
    """alpha_ce * T^2 KL + alpha_mlm * MLM + alpha_cos * (1 - cos), the teacher on the student's masked inputs."""
    import torch
    import torch.nn.functional as F

    from bertcli.distill import cosine_loss, kd_loss
    from bertcli.tasks.distillation import PretrainDistillOptions, build_distill_pretraining
    from bertcli.train import make_generator

    teacher = make_tiny_model(tmp_path / "teacher", minilm_dir, num_layers=2, seed=4, max_positions=64)
    opts = PretrainDistillOptions(teacher=str(teacher), student_layers="1", temperature=3.0, alpha_ce=0.5,
                                  alpha_mlm=2.0, alpha_cos=7.0)
    task, _ = build_distill_pretraining([str(ROOT / "examples" / "corpus")], str(tmp_path / "out"), opts,
                                        data_overrides={"objective": "mlm", "max_seq_length": 32})
    model = task.build_model().eval()
    (batch, *_) = task.train_batches(0, make_generator(0), 4, 0, 1)
    cpu = torch.device("cpu")
    loss, logs = task.compute_loss(model, batch, make_generator("masks"), cpu)
    inputs, labels = task.inner._mask(batch["input_ids"], make_generator("masks"))  # the same masks
    pos = labels != -100
    att = batch["attention_mask"]
    with torch.no_grad():
        s_h = model.bert(inputs, att, batch["token_type_ids"])
        t_h = task.teacher.bert(inputs, att, batch["token_type_ids"])
        s_logits = model.mlm(s_h[pos], model.bert.embeddings.word.weight)
        t_logits = task.teacher.mlm(t_h[pos], task.teacher.bert.embeddings.word.weight)
    want = (0.5 * kd_loss(s_logits, t_logits, 3.0) + 2.0 * F.cross_entropy(s_logits, labels[pos])
            + 7.0 * cosine_loss(s_h, t_h, att))
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert logs["masked"] == int(pos.sum()) > 0
