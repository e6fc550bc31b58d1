"""Fill-mask: the top-k tokens (and probabilities) for every mask token (``[MASK]``, ``<mask>``) in a text.

The ranking is that of transformers' ``fill-mask`` pipeline on ``BertForMaskedLM``: a softmax
over the whole vocabulary at each mask position, then the k most probable tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertcli.errors import CheckpointError, DataError


@dataclass
class Candidate:
    token: str
    id: int
    score: float


@dataclass
class MaskResult:
    text: str
    position: int                 # token index of the [MASK] in the encoded input
    candidates: list[Candidate]


class FillMask:
    """Load a checkpoint with an MLM head once; call :meth:`predict` on texts."""

    def __init__(self, model_dir: str | Path, device: str = "auto", precision: str = "fp32"):
        from bertcli.checkpoint import WEIGHTS_NAME, load_checkpoint, load_into, load_tokenizer
        from bertcli.device import resolve_device, resolve_precision
        from bertcli.heads import BertForPreTraining

        ckpt = load_checkpoint(model_dir)
        if "mlm" not in ckpt.heads:
            raise CheckpointError(
                f"{model_dir}: has no masked-language-model head (cls.predictions); fill-mask needs a "
                f"pretraining checkpoint (bertcli pretrain) or a BertForMaskedLM / BertForPreTraining one"
            )
        self.tok = load_tokenizer(ckpt.path, ckpt.config.vocab_size)
        self.config = ckpt.config
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        model = BertForPreTraining(ckpt.config, nsp=False)
        state = {k: v for k, v in ckpt.state.items()
                 if k.startswith(("bert.", "mlm.")) and not k.startswith("bert.pooler.")}
        load_into(model, state, str(ckpt.path / WEIGHTS_NAME))
        self.model = model.eval().to(self.device)

    def predict(self, texts: list[str], top_k: int = 5, batch_size: int = 32) -> list[list[MaskResult]]:
        """For each text, one :class:`MaskResult` per ``[MASK]`` (in order)."""
        import torch

        from bertcli.device import autocast
        from bertcli.tokenizer import pad_batch

        if top_k < 1:
            raise DataError(f"--top-k must be at least 1, got {top_k}")
        top_k = min(top_k, self.config.vocab_size)
        results: list[list[MaskResult]] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            encs = self.tok.encode_batch(chunk, max_length=self.config.max_positions)
            for j, (text, e) in enumerate(zip(chunk, encs, strict=True)):
                if self.tok.mask_id not in e.ids:
                    shown = repr(text if len(text) <= 60 else text[:57] + "...")
                    mask = self.tok.special_tokens["mask"]  # [MASK] for BERT, <mask> for RoBERTa
                    if e.truncated and mask in text:
                        raise DataError(
                            f"text {start + j + 1} ({shown}): its {mask} lies beyond the model's "
                            f"{self.config.max_positions} tokens; shorten the text"
                        )
                    raise DataError(f"text {start + j + 1} ({shown}): no {mask} token; write {mask} where a word "
                                    f"should be predicted")
            ids, att, types = pad_batch([e.ids for e in encs], [e.type_ids for e in encs], self.tok.pad_id,
                                        self.device)
            positions = ids == self.tok.mask_id
            with torch.no_grad(), autocast(self.device, self.precision):
                logits, _ = self.model(ids, att, types, mlm_positions=positions)  # (M, V)
            probs = logits.float().softmax(-1)
            scores, top = probs.topk(top_k, dim=-1)
            rows, cols = positions.nonzero(as_tuple=True)
            per_text: list[list[MaskResult]] = [[] for _ in chunk]
            for m, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
                cands = [Candidate(self.tok.id_to_token(i) or f"[{i}]", int(i), float(s))
                         for i, s in zip(top[m].tolist(), scores[m].tolist(), strict=True)]
                per_text[r].append(MaskResult(chunk[r], c, cands))
            results.extend(per_text)
        return results

    def fill(self, text: str, result: list[MaskResult]) -> str:
        """The text with every [MASK] replaced by its top candidate (decoded)."""
        enc = self.tok.encode(text, max_length=self.config.max_positions)
        ids = list(enc.ids)
        for r in result:
            ids[r.position] = r.candidates[0].id
        return self.tok.decode(ids)


def fill_mask(model_dir: str | Path, texts: list[str], top_k: int = 5, device: str = "auto") -> list[list[MaskResult]]:
    """Top-k predictions for each [MASK] of each text."""
    return FillMask(model_dir, device=device).predict(texts, top_k=top_k)
