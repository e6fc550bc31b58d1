"""Probe ELECTRA discriminators (issue 15): AUC on uniform-random and on unigram replacements (the latter only
context can find), the hidden-state norm, LayerNorm scales, and how input-dependent h[CLS] is (mean pairwise
cosine over SST-2 dev sentences; 1 = the same vector for every sentence).

    OMP_NUM_THREADS=1 python benchmarks/electra_probe.py --tokenizer VOCAB --sst2-dev DEV.tsv DIR [DIR ...]
"""

from __future__ import annotations

import argparse

import torch

from bertcli.checkpoint import load_checkpoint, load_into
from bertcli.heads import BertForReplacedTokenDetection
from bertcli.tasks.electra import roc_auc
from bertcli.tasks.pretraining import build_pretraining


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    n = len(x)
    return float(((x @ x.T).sum() - n) / (n * n - n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--corpus", default="../shared/data/corpus")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--sst2-dev", required=True)
    p.add_argument("--out", default="/tmp/electra-probe", help="scratch directory for the corpus cache")
    a = p.parse_args()
    data = {"objective": "electra", "max_seq_length": 128, "encoding": "auto"}
    if a.cache_dir:
        data["cache_dir"] = a.cache_dir
    task, _ = build_pretraining([a.corpus], a.out, tokenizer=a.tokenizer, preset="mini", data_overrides=data)
    examples = task._examples(task.eval_docs, seed=12345)[:256]
    batches = [task._collate(examples[i:i + 64]) for i in range(0, len(examples), 64)]
    texts = [r.split("\t")[0] for r in open(a.sst2_dev, encoding="utf-8").read().splitlines()[1:257]]
    specials = torch.tensor(task.special_ids)
    for d in a.models:
        ck = load_checkpoint(d)
        model = BertForReplacedTokenDetection(ck.config)
        load_into(model, ck.state, d, allow_missing=("rtd.",))  # a random-init directory has no RTD head
        model.eval()
        g = torch.Generator().manual_seed(0)
        aucs = {}
        for kind in ("uniform", "unigram"):
            scores, labels = [], []
            for b in batches:
                ids, att = b["input_ids"], b["attention_mask"].bool()
                words = att & ~torch.isin(ids, specials)
                chosen = words & (torch.rand(ids.shape, generator=g) < 0.15)
                new = ids.clone()
                if kind == "uniform":
                    new[chosen] = torch.randint(len(task.special_ids), ck.config.vocab_size, (int(chosen.sum()),), generator=g)
                else:
                    pool = ids[words]
                    new[chosen] = pool[torch.randint(0, pool.numel(), (int(chosen.sum()),), generator=g)]
                with torch.no_grad():
                    logits = model(new, b["attention_mask"], b["token_type_ids"])
                scores.append(logits[words])  # as rtd_context_auc: the non-special tokens, 1 = chosen
                labels.append(chosen[words])
            aucs[kind] = roc_auc(torch.cat(scores).numpy(), torch.cat(labels).numpy())
        b = batches[0]
        with torch.no_grad():
            hidden = model.bert(b["input_ids"], b["attention_mask"], b["token_type_ids"])[b["attention_mask"].bool()]
        norms = [float(v.abs().mean()) for k, v in model.state_dict().items() if "norm" in k and k.endswith("weight")]
        enc = task.tok.encode_batch(texts, max_length=64)
        length = max(len(e.ids) for e in enc)
        ids = torch.tensor([e.ids + [task.tok.pad_id] * (length - len(e.ids)) for e in enc])
        att = (torch.arange(length)[None] < torch.tensor([len(e.ids) for e in enc])[:, None]).long()
        with torch.no_grad():
            cls = model.bert(ids, att, torch.zeros_like(ids))[:, 0]
        print(f"{d}: uniform AUC {aucs['uniform']:.4f}, unigram (context) AUC {aucs['unigram']:.4f}, "
              f"hidden norm {float(hidden.norm(dim=-1).mean()):.2f}, [CLS] pairwise cosine {mean_pairwise_cosine(cls):.4f}, "
              f"LayerNorm |w| {' '.join(f'{x:.3f}' for x in norms)}")


if __name__ == "__main__":
    main()
