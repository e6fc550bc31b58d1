"""ELECTRA pretraining (``pretrain --objective electra``): replaced-token detection.

A small generator (an MLM ``generator_size`` times the discriminator's width, as deep) fills the
masked positions with tokens sampled from its softmax; the discriminator sees the result and
tells, at every non-pad position, whether a token was replaced. The two share the embeddings
(word, position, token-type tables and their LayerNorm, all of width E = ``embedding_size``);
each keeps its own E -> H projection. The loss is ``mlm_loss + rtd_weight * rtd_loss``
(Clark et al. 2020: 50). The run directory is the discriminator (``ElectraForPreTraining``),
``OUT/generator/`` the generator (``ElectraForMaskedLM``).

The data, masking and training loop are those of MLM pretraining (``PretrainingTask``); this
module supplies the model, the loss, the metrics and the two-directory checkpoint.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from bertcli.config import BertConfig
from bertcli.errors import ConfigError
from bertcli.tasks.pretraining import ElectraOptions, PretrainingTask

GENERATOR_DIR = "generator"


def generator_config(config: BertConfig, size: float) -> BertConfig:
    """The generator's shape: ``size`` x the discriminator's hidden size, heads and intermediate size,
    as many layers, the same embedding width (E) and everything else."""
    import dataclasses

    hidden = max(1, round(config.hidden_size * size))
    heads = max(1, round(config.num_heads * size))
    while hidden % heads:  # the nearest head count that divides the width
        heads -= 1
    values = dataclasses.asdict(config)
    values.update(hidden_size=hidden, num_heads=heads, intermediate_size=max(1, round(config.intermediate_size * size)),
                  embedding_size=config.word_size)
    try:
        return BertConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"--generator-size {size}: {exc}") from None


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for the binary ``labels`` (ties count one half);
    NaN when only one class is present (Mann-Whitney U with average ranks)."""
    import numpy as np
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _electra_model(disc_config: BertConfig, gen_config: BertConfig, temperature: float = 1.0):
    import torch
    from torch import nn

    from bertcli.heads import BertForPreTraining, BertForReplacedTokenDetection

    class ElectraPretrainingModel(nn.Module):
        """Generator (MLM) + discriminator (RTD) with shared embeddings; one forward for DDP."""

        def __init__(self):
            super().__init__()
            self.discriminator = BertForReplacedTokenDetection(disc_config)
            self.generator = BertForPreTraining(gen_config, nsp=False)
            g, d = self.generator.bert.embeddings, self.discriminator.bert.embeddings
            g.word, g.position, g.token_type, g.norm = d.word, d.position, d.token_type, d.norm

        def forward(self, input_ids, masked_ids, attention_mask, token_type_ids, positions, uniforms):
            """``positions``: the (B, T) masked positions (M of them); ``uniforms``: M draws in [0, 1)
            that pick the sampled tokens. Returns (M, V) generator logits, (B, T) discriminator
            logits and the (B, T) ids the discriminator saw."""
            mlm_logits, _ = self.generator(masked_ids, attention_mask, token_type_ids, mlm_positions=positions)
            with torch.no_grad():  # sample from the generator's softmax by its inverse CDF; no gradient
                cdf = torch.softmax(mlm_logits.detach().float() / temperature, dim=-1).cumsum(-1)  # (M, V)
                u = (uniforms.float() * cdf[:, -1]).unsqueeze(-1).contiguous()  # (M, 1)
                sampled = torch.searchsorted(cdf.contiguous(), u).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
                replaced = input_ids.clone()
                replaced[positions] = sampled
            rtd_logits = self.discriminator(replaced, attention_mask, token_type_ids)  # (B, T)
            return mlm_logits, rtd_logits, replaced

    return ElectraPretrainingModel()


class ElectraPretrainingTask(PretrainingTask):
    name = "pretraining"

    def __init__(self, *args, electra: ElectraOptions | None = None, init_generator: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.family != "electra":
            raise ConfigError(
                f"--objective electra trains an ELECTRA discriminator, but the model is a {self.config.family}; "
                f"use --arch electra (or an ELECTRA checkpoint with --init-from)"
            )
        self.electra = electra or ElectraOptions()
        self.gen_config = generator_config(self.config, self.electra.generator_size)
        self.init_generator = init_generator

    # ---------------------------------------------------------- Task
    def build_model(self):
        from bertcli.checkpoint import load_into

        model = _electra_model(self.config, self.gen_config, self.electra.temperature)
        if self.init_state is not None:
            load_into(model.discriminator, self.init_state, self.init_source or "--init-from",
                      allow_missing=("rtd.",))
        if self.init_generator is not None:
            load_into(model.generator, self.init_generator, f"{self.init_source}/{GENERATOR_DIR}")
        return model

    def load_weights(self, model, checkpoint_dir) -> None:
        from bertcli.checkpoint import WEIGHTS_NAME, load_checkpoint, load_into

        d = Path(checkpoint_dir)
        load_into(model.discriminator, load_checkpoint(d).state, str(d / WEIGHTS_NAME))
        load_into(model.generator, load_checkpoint(d / GENERATOR_DIR).state, str(d / GENERATOR_DIR / WEIGHTS_NAME))

    def _forward(self, model, batch, generator, device):
        torch = self._torch
        inputs, labels = self._mask(batch["input_ids"], generator)
        positions = labels != -100
        uniforms = torch.rand(int(positions.sum()), generator=generator)
        ids = batch["input_ids"].to(device)
        att = batch["attention_mask"].to(device)
        mlm_logits, rtd_logits, replaced = model(ids, inputs.to(device), att, batch["token_type_ids"].to(device),
                                                 positions.to(device), uniforms.to(device))
        targets = labels[positions].to(device)
        real = att.bool()
        rtd_labels = (replaced != ids)[real].float()  # (N,) 1 = replaced, at the N non-pad positions
        return mlm_logits, targets, rtd_logits[real].float(), rtd_labels

    def compute_loss(self, model, batch, generator, device):
        F = self._torch.nn.functional
        mlm_logits, targets, rtd_logits, rtd_labels = self._forward(model, batch, generator, device)
        if targets.numel():
            mlm_loss = F.cross_entropy(mlm_logits.float(), targets)
        else:
            mlm_loss = mlm_logits.float().sum() * 0.0
        rtd_loss = F.binary_cross_entropy_with_logits(rtd_logits, rtd_labels)
        logs = {"tokens": int(batch["attention_mask"].sum()), "masked": int(targets.numel())}
        return mlm_loss + self.electra.rtd_weight * rtd_loss, logs

    def evaluate(self, model, device) -> dict[str, float]:
        torch = self._torch
        F = torch.nn.functional
        from bertcli.train import make_generator

        if len(self.eval_docs) == 0:
            return {}
        if self._eval_batches is None:
            examples = self._examples(self.eval_docs, seed=12345)[: self.data.max_eval_examples]
            self._eval_batches = [self._collate(examples[i:i + 64]) for i in range(0, len(examples), 64)]
        gen = make_generator("eval-masks")  # the same masks and samples at every evaluation
        ctx_gen = make_generator("eval-context")
        mlm_sum, n_masked, mlm_correct, rtd_sum, rtd_correct = 0.0, 0, 0, 0.0, 0
        scores, truth, ctx_scores, ctx_truth = [], [], [], []
        for batch in self._eval_batches:
            with torch.no_grad():
                mlm_logits, targets, rtd_logits, rtd_labels = self._forward(model, batch, gen, device)
                s, t = self._context_probe(model, batch, ctx_gen, device)
            ctx_scores.append(s)
            ctx_truth.append(t)
            if targets.numel():
                mlm_sum += float(F.cross_entropy(mlm_logits.float(), targets, reduction="sum"))
                mlm_correct += int((mlm_logits.argmax(-1) == targets).sum())
                n_masked += targets.numel()
            rtd_sum += float(F.binary_cross_entropy_with_logits(rtd_logits, rtd_labels, reduction="sum"))
            rtd_correct += int(((rtd_logits > 0).float() == rtd_labels).sum())
            scores.append(rtd_logits.cpu())
            truth.append(rtd_labels.cpu())
        if n_masked == 0:
            return {}
        scores_t, truth_t = torch.cat(scores), torch.cat(truth)
        n = truth_t.numel()
        mlm_loss, rtd_loss = mlm_sum / n_masked, rtd_sum / n
        return {
            "total_loss": mlm_loss + self.electra.rtd_weight * rtd_loss,
            "mlm_loss": mlm_loss, "mlm_accuracy": mlm_correct / n_masked,
            "perplexity": math.exp(min(mlm_loss, 50.0)),
            "rtd_loss": rtd_loss, "rtd_accuracy": rtd_correct / n,
            "rtd_auc": roc_auc(scores_t.numpy(), truth_t.numpy()),
            "rtd_context_auc": roc_auc(torch.cat(ctx_scores).numpy(), torch.cat(ctx_truth).numpy()),
            "replaced_fraction": float(truth_t.mean()),
        }

    def _context_probe(self, model, batch, generator, device):
        """Discriminator scores and labels at the non-special tokens of the batch, mask_prob of them replaced by
        tokens drawn from the batch itself, i.e. from the unigram distribution. The label is 1 at every chosen
        position, also where the draw equals the original, so that the tokens at labelled and unlabelled
        positions have the same distribution (special tokens, never chosen, are left out): a token's identity
        says nothing about its label, only its context does. A discriminator that has learnt only which tokens are unlikely (a generator that is
        random, or sampled at a high temperature, replaces with rare tokens) scores 0.5 here however high
        its ``rtd_auc``."""
        torch = self._torch
        ids, att = batch["input_ids"], batch["attention_mask"].bool()
        words = att & ~torch.isin(ids, torch.tensor(self.special_ids, dtype=ids.dtype))
        chosen = words & (torch.rand(ids.shape, generator=generator) < self.masking.mask_prob)
        pool = ids[words]
        replaced = ids.clone()
        replaced[chosen] = pool[torch.randint(0, max(1, pool.numel()), (int(chosen.sum()),), generator=generator)]
        logits = model.discriminator(replaced.to(device), att.to(device), batch["token_type_ids"].to(device))
        return logits[words.to(device)].float().cpu(), chosen[words].float()

    def checkpoint_payload(self, model) -> dict:
        from bertcli.checkpoint import save_checkpoint

        meta = {"objective": "electra", "max_seq_length": self.data.max_seq_length,
                "generator_size": self.electra.generator_size, "rtd_weight": self.electra.rtd_weight,
                "generator_temperature": self.electra.temperature}
        files: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory(prefix="bertcli-generator-") as tmp:
            gdir = save_checkpoint(Path(tmp) / GENERATOR_DIR, model.generator.state_dict(), self.gen_config,
                                   self.tok, task="pretraining", bertcli={**meta, "role": "generator"})
            for f in sorted(gdir.rglob("*")):
                if f.is_file():
                    files[f"{GENERATOR_DIR}/{f.relative_to(gdir).as_posix()}"] = f.read_bytes()
        return {"state": model.discriminator.state_dict(), "config": self.config, "tokenizer": self.tok,
                "task": "pretraining", "bertcli": {**meta, "role": "discriminator"}, "extra_files": files}
