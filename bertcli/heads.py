"""Task heads on the encoder, and sentence pooling.

Every model here has the encoder as ``.bert`` and its heads under fixed attribute names
(``mlm``, ``nsp``, ``classifier``, ``qa``); ``checkpoint.py`` maps exactly these names to
the Hugging Face ones (``cls.predictions``, ``cls.seq_relationship``, ``classifier``,
``qa_outputs``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertcli.config import BertConfig
from bertcli.model import BertModel, activation, init_weights

POOLINGS = ("cls", "mean", "max")


class MLMHead(nn.Module):
    """dense + activation + LayerNorm, then a decoder tied to the word embeddings, plus a bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.activation)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states and the (V, H) word-embedding matrix -> (..., V) logits."""
        return F.linear(self.norm(self.act(self.dense(hidden))), word_embeddings, self.bias)


class BertForPreTraining(nn.Module):
    """Encoder + tied MLM head + optional NSP head (on the pooler)."""

    def __init__(self, config: BertConfig, nsp: bool = True):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, with_pooler=nsp)
        self.mlm = MLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2) if nsp else None
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, mlm_positions=None):
        """Returns ``(mlm_logits, nsp_logits | None)``.

        With ``mlm_positions`` (a boolean (B, T) mask) the vocabulary projection runs only at
        those positions and ``mlm_logits`` is (M, V) for the M selected tokens; else (B, T, V).
        """
        hidden = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        selected = hidden[mlm_positions] if mlm_positions is not None else hidden
        mlm_logits = self.mlm(selected, self.bert.embeddings.word.weight)
        nsp_logits = self.nsp(self.bert.pooler(hidden)) if self.nsp is not None else None
        return mlm_logits, nsp_logits


class BertForSequenceClassification(nn.Module):
    """Pooler output -> dropout -> linear (num_labels; 1 for regression)."""

    def __init__(self, config: BertConfig, num_labels: int, classifier_dropout: float | None = None):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, with_pooler=True)
        self.dropout = nn.Dropout(config.hidden_dropout if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.bert.pooler(hidden)))  # (B, num_labels)


class BertForTokenClassification(nn.Module):
    """Every token's hidden state -> dropout -> linear (num_labels)."""

    def __init__(self, config: BertConfig, num_labels: int, classifier_dropout: float | None = None):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, with_pooler=False)
        self.dropout = nn.Dropout(config.hidden_dropout if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(hidden))  # (B, T, num_labels)


class BertForQuestionAnswering(nn.Module):
    """Span head: every token's hidden state -> (start, end) logits."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, with_pooler=False)
        self.qa = nn.Linear(config.hidden_size, 2)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        start, end = self.qa(hidden).unbind(-1)  # 2 x (B, T)
        return start, end


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence vectors (B, H) from hidden states (B, T, H) by ``cls``, ``mean`` or ``max`` pooling.

    Padding never contributes. ``mean`` matches sentence-transformers (sum / clamp(count, 1e-9)).
    """
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
    raise ValueError(f"unknown pooling '{mode}'; valid: {', '.join(POOLINGS)}")
