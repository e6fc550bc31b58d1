"""Instrumented short ELECTRA run (issue 15: why temperature 1 collapsed at lr 1e-3).

The benchmark's `mini` shape on ../shared/data/corpus; every ``--every`` steps the gradient norms of the MLM
loss and of rtd_weight x the RTD loss (shared embeddings / discriminator / generator, before the clip), the
train RTD loss against the prior's entropy, the replaced share and the spread of the discriminator's logits;
the held-out metrics (``rtd_auc``, ``rtd_context_auc``, ...) at each evaluation. One JSON line each to OUT.jsonl.

    OMP_NUM_THREADS=1 python benchmarks/electra_instrument.py OUT --tokenizer VOCAB --lr 3e-4 --temperature 1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from bertcli.tasks.electra import ElectraPretrainingTask
from bertcli.tasks.pretraining import build_pretraining
from bertcli.train import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--corpus", default="../shared/data/corpus")
    p.add_argument("--cache-dir", default=None, help="a corpus cache to reuse (default OUT/cache)")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--rtd-weight", type=float, default=50.0)
    p.add_argument("--warmup", type=float, default=0.06)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=50)
    a = p.parse_args()
    log = open(a.out + ".jsonl", "w", encoding="utf-8")
    calls = {"n": 0}
    original = ElectraPretrainingTask.compute_loss

    def compute_loss(self, model, batch, generator, device):
        calls["n"] += 1
        if calls["n"] % a.every:
            return original(self, model, batch, generator, device)
        F = torch.nn.functional
        replay = torch.Generator().set_state(generator.get_state())  # the same masks as the step's own pass
        mlm_logits, targets, rtd_logits, rtd_labels = self._forward(model, batch, replay, device)
        mlm = F.cross_entropy(mlm_logits.float(), targets)
        rtd = F.binary_cross_entropy_with_logits(rtd_logits, rtd_labels)
        shared = ("discriminator.bert.embeddings.word", "discriminator.bert.embeddings.position",
                  "discriminator.bert.embeddings.token_type", "discriminator.bert.embeddings.norm")
        named = list(model.named_parameters())  # shared tensors are listed once, under the discriminator
        groups = {"emb": [q for n, q in named if n.startswith(shared)],
                  "disc": [q for n, q in named if n.startswith("discriminator.") and not n.startswith(shared)],
                  "gen": [q for n, q in named if n.startswith("generator.")]}
        rec = {"step": calls["n"]}
        for name, loss in (("mlm", mlm), ("rtd_weighted", self.electra.rtd_weight * rtd)):
            for group, params in groups.items():
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                rec[f"grad_{name}_{group}"] = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))
        share = float(rtd_labels.mean())
        rec.update(rtd_loss=float(rtd.detach()), prior_entropy=-(share * math.log(share) + (1 - share) * math.log(1 - share)),
                   replaced=share, mlm_loss=float(mlm.detach()), logit_std=float(rtd_logits.detach().std()))
        log.write(json.dumps(rec) + "\n")
        log.flush()
        return original(self, model, batch, generator, device)

    ElectraPretrainingTask.compute_loss = compute_loss
    data = {"objective": "electra", "max_seq_length": 128, "encoding": "auto", "max_eval_examples": 256}
    if a.cache_dir:
        data["cache_dir"] = a.cache_dir
    task, args = build_pretraining(
        [a.corpus], a.out, tokenizer=a.tokenizer, preset="mini", data_overrides=data,
        train_overrides={"max_steps": a.steps, "lr": a.lr, "batch_size": 32, "eval_every": a.eval_every, "save_every": 0,
                         "precision": a.precision, "warmup": a.warmup, "quiet": True, "seed": 0, "device": "cpu"},
        electra_overrides={"generator_size": 0.25, "rtd_weight": a.rtd_weight, "temperature": a.temperature})
    t = time.process_time()
    fit(task, args)
    evals = [json.loads(x) for x in open(f"{a.out}/metrics.jsonl", encoding="utf-8") if '"eval"' in x]
    for e in evals:
        log.write(json.dumps({"eval_step": e["step"], **e["eval"]}) + "\n")
    log.write(json.dumps({"cpu_s": time.process_time() - t}) + "\n")


if __name__ == "__main__":
    main()
