"""bertcli pretrain: corpus pipeline, objectives, Hugging Face compatibility, SIGKILL + resume,
signals and bad input (tiny model, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bertcli.errors import ConfigError, DataError, TokenizerError

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples" / "corpus"
TINY_YAML = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from bertcli.vocab import train_vocab

    out = tmp_path_factory.mktemp("vocab") / "vocab"
    train_vocab([CORPUS], out, vocab_size=600, held_out=0.0)
    return out


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    import yaml

    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump({
        "model": TINY_YAML,
        "data": {"max_seq_length": 32, "eval_fraction": 0.1},
        "train": {"batch_size": 8, "lr": 1e-3, "warmup": 0.1, "log_every": 1, "eval_every": 4},
    }))
    return p


def run_cli(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bertcli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def weights(path):
    from bertcli.checkpoint import load_checkpoint

    return load_checkpoint(path).state


def losses(out):
    recs = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


# ------------------------------------------------------------ corpus pipeline
def test_corpus_cache_and_split(vocab, tmp_path, monkeypatch):
    from bertcli.data import corpus as C
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(vocab)
    c1 = C.load_corpus([CORPUS], tok, tmp_path)
    assert c1.num_docs > 10 and c1.tokens.dtype == np.int32 and isinstance(c1.tokens, np.memmap)
    # the ids are those of the tokenizer without special tokens
    first = " ".join((CORPUS / "everyday.txt").read_text().splitlines()[0].split())
    assert list(c1.document(0)[0]) == tok.backend.encode(first, add_special_tokens=False).ids
    monkeypatch.setattr(C, "_tokenize_lines", lambda *a, **k: pytest.fail("tokenised again"))
    c2 = C.load_corpus([CORPUS], tok, tmp_path)
    assert c2.path == c1.path and np.array_equal(c1.tokens, c2.tokens)
    train, held = C.split_heldout(c1.num_docs, 0.1)
    assert len(held) == round(c1.num_docs * 0.1) and not set(train) & set(held)
    assert np.array_equal(C.split_heldout(c1.num_docs, 0.1)[1], held)


def test_examples_shapes(vocab, tmp_path):
    from bertcli.data import corpus as C
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(vocab)
    c = C.load_corpus([CORPUS], tok, tmp_path)
    docs = np.arange(c.num_docs)
    ex = C.nsp_examples(c, docs, 48, 0.1, seed=1, cls_id=tok.cls_id, sep_id=tok.sep_id)
    assert ex and all(len(e.ids) <= 48 and e.ids[0] == tok.cls_id and e.ids[-1] == tok.sep_id for e in ex)
    share = np.mean([e.nsp for e in ex])
    assert 0.3 < share < 0.7
    assert all((e.ids == tok.sep_id).sum() == 2 and e.type_ids[-1] == 1 for e in ex)
    assert [e.ids.tolist() for e in C.nsp_examples(c, docs, 48, 0.1, 1, tok.cls_id, tok.sep_id)] == \
        [e.ids.tolist() for e in ex]
    packed = C.packed_examples(c, docs, 48, tok.cls_id, tok.sep_id)
    assert all(len(e.ids) <= 48 and e.nsp == -1 for e in packed)
    # packing keeps every token (ids without [CLS]/[SEP] add up to the corpus)
    n = sum(int(((e.ids != tok.cls_id) & (e.ids != tok.sep_id)).sum()) for e in packed)
    assert n == c.num_tokens
    assert np.mean([len(e.ids) for e in packed]) > 0.6 * 48  # whole sentences packed


# ------------------------------------------------------------ training to a checkpoint
@pytest.fixture(scope="module")
def pretrained(vocab, tiny_yaml, tmp_path_factory):
    from bertcli.tasks.pretraining import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("pt") / "run"
    s = pretrain([str(CORPUS)], str(out), tokenizer=str(vocab), config=PretrainConfig.from_yaml(tiny_yaml),
                 train_overrides={"max_steps": 8, "device": "cpu", "precision": "fp32", "quiet": True},
                 masking_overrides={"whole_word": True})
    return out, s


def test_pretrain_checkpoint_loads_in_transformers(pretrained):
    from transformers import BertForMaskedLM, BertForPreTraining

    from bertcli.checkpoint import load_checkpoint
    from bertcli.heads import BertForPreTraining as Ours

    out, s = pretrained
    assert s["steps"] == 8 and set(s["final_metrics"]) >= {"mlm_loss", "mlm_accuracy", "perplexity",
                                                           "nsp_accuracy"}
    assert (out / "run.yaml").is_file() and (out / "checkpoints" / "step-8" / "trainer_state").is_dir()
    ckpt = load_checkpoint(out)
    ours = Ours(ckpt.config, nsp=True)
    ours.load_state_dict(ckpt.state)
    ours.eval()
    ids = torch.randint(5, ckpt.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    att = torch.ones_like(ids)
    att[1, 9:] = 0
    with torch.no_grad():
        mlm, nsp = ours(ids, att, types)
        hf = BertForPreTraining.from_pretrained(out, attn_implementation="eager").eval()
        o = hf(input_ids=ids, attention_mask=att, token_type_ids=types)
        mlm_only = BertForMaskedLM.from_pretrained(out).eval()(input_ids=ids, attention_mask=att,
                                                                token_type_ids=types)
    keep = att.bool()
    assert torch.allclose(o.prediction_logits[keep], mlm[keep], atol=1e-4)
    assert torch.allclose(o.seq_relationship_logits, nsp, atol=1e-4)
    assert torch.allclose(mlm_only.logits[keep], mlm[keep], atol=1e-4)


def test_mlm_objective_and_init_from(vocab, pretrained, tmp_path):
    from bertcli.checkpoint import load_checkpoint
    from bertcli.tasks.pretraining import pretrain

    src, _ = pretrained
    s = pretrain([str(CORPUS)], str(tmp_path / "more"), init_from=str(src),
                 data_overrides={"objective": "mlm", "max_seq_length": 32},
                 train_overrides={"max_steps": 3, "batch_size": 4, "device": "cpu", "precision": "fp32",
                                  "quiet": True, "eval_every": 3})
    assert "nsp_accuracy" not in s["final_metrics"] and "mlm_accuracy" in s["final_metrics"]
    ck = load_checkpoint(tmp_path / "more")
    assert ck.hf_config["architectures"] == ["BertForMaskedLM"] and "nsp" not in ck.heads


# ------------------------------------------------------------ SIGKILL, resume, signals
def _pretrain_args(vocab, tiny_yaml, out, steps):
    return ["pretrain", CORPUS, "--tokenizer", vocab, "--config", tiny_yaml, "--out", out, "--max-steps", steps,
            "--save-every", 2, "--keep-last", 2, "--device", "cpu", "--precision", "fp32", "--quiet"]


def _wait_for(path: Path, proc, timeout=240):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.005)


def test_sigkill_then_resume_matches_uninterrupted(vocab, tiny_yaml, tmp_path):
    steps = 40
    straight = run_cli(*_pretrain_args(vocab, tiny_yaml, tmp_path / "straight", steps))
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bertcli", *map(str, _pretrain_args(vocab, tiny_yaml, out, steps))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _wait_for(out / "checkpoints" / "step-4", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    from bertcli.train import checkpoint_steps

    done = checkpoint_steps(out)[-1][0]
    assert 4 <= done < steps
    resumed = run_cli(*_pretrain_args(vocab, tiny_yaml, out, steps), "--resume", "auto", "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"].endswith(f"step-{done}") and summary["steps"] == steps
    assert losses(out) == losses(tmp_path / "straight")  # the whole trajectory, bitwise
    a, b = weights(tmp_path / "straight"), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_and_exits(vocab, tiny_yaml, tmp_path, sig, code):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bertcli", *map(str, _pretrain_args(vocab, tiny_yaml, out, 100000))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _wait_for(out / "checkpoints" / "step-2", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "checkpoint saved" in err and "--resume auto" in err and "Traceback" not in err
    from bertcli.train import checkpoint_steps, read_trainer_state

    step, path = checkpoint_steps(out)[-1]
    assert step >= 2 and read_trainer_state(path)[0]["reason"] in ("signal", "periodic")


# ------------------------------------------------------------ bad input
def test_bad_input_errors(vocab, pretrained, minilm_dir, tmp_path):
    from bertcli.tasks.pretraining import DataOptions, PretrainConfig, build_pretraining

    def build(corpus, **kw):
        kw.setdefault("tokenizer", str(vocab))
        cfg = PretrainConfig(model={} if "init_from" in kw else dict(TINY_YAML), data=DataOptions(max_seq_length=32))
        return build_pretraining([str(c) for c in corpus], str(tmp_path / "out"), config=cfg, **kw)

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match="holds no text"):
        build([empty])
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(DataError, match=r"data\.bin.*binary"):
        build([binary])
    short = tmp_path / "short.txt"
    short.write_text("one sentence here.\n\nanother lonely line.\n\na third one.\n")
    with pytest.raises(DataError, match="too short for next-sentence prediction"):
        build([short])
    build([short], data_overrides={"objective": "mlm"})  # fine without NSP
    src, _ = pretrained
    with pytest.raises(TokenizerError, match=r"tokens but .* embedding rows"):
        build([CORPUS], tokenizer=str(minilm_dir), init_from=str(src))
    with pytest.raises(ConfigError, match="max_seq_length|max_position"):
        build([CORPUS], data_overrides={"max_seq_length": 100})


def test_cli_errors(vocab, tiny_yaml, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli(*_pretrain_args(vocab, tiny_yaml, blocker / "run", 2))
    assert r.returncode == 1 and "run directory" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\ntrain:\n  batch_sise: 3\n")
    r = run_cli("pretrain", CORPUS, "--tokenizer", vocab, "--config", bad, "--out", tmp_path / "o")
    assert r.returncode == 1 and "batch_sise" in r.stderr
    r = run_cli("pretrain", tmp_path / "missing", "--tokenizer", vocab, "--out", tmp_path / "o2")
    assert r.returncode == 1 and "missing" in r.stderr


def test_torchrun_two_ranks_and_resume(vocab, tiny_yaml, tmp_path):
    """torchrun with 2 gloo ranks: rank 0 writes checkpoints; a resume continues the run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", str(port), "-m", "bertcli",
               *map(str, [*_pretrain_args(vocab, tiny_yaml, out, 4), *extra])]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)

    r = launch()
    assert r.returncode == 0, r.stderr[-3000:]
    from bertcli.train import checkpoint_steps, read_trainer_state

    assert [s for s, _ in checkpoint_steps(out)] == [2, 4]
    assert read_trainer_state(out / "checkpoints" / "step-4")[0]["args"]["world_size"] == 2
    r = launch("--resume", "auto", "--max-steps", 6)
    assert r.returncode == 0, r.stderr[-3000:]
    assert checkpoint_steps(out)[-1][0] == 6
