"""Task heads on the encoder, and sentence pooling.

Every model here has the encoder as ``.bert`` and its heads under fixed attribute names
(``mlm``, ``nsp``, ``pre_classifier``, ``classifier``, ``qa``, ``rtd``); ``checkpoint.py`` maps
exactly these names to each family's Hugging Face ones (BERT: ``cls.predictions``,
``cls.seq_relationship``, ``classifier``, ``qa_outputs``; RoBERTa: ``lm_head``,
``classifier.dense`` / ``classifier.out_proj``; ALBERT: ``predictions``, ``sop_classifier``; ...).
The config picks each head's variant when it is built: the MLM head's width (E) and activation,
the sequence classifier on the pooler (BERT, ALBERT) or a dense head on ``<s>`` (RoBERTa tanh,
ELECTRA gelu, DistilBERT's pre-classifier with relu, DeBERTa's context pooler with ``pooler_hidden_act``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertcli.config import BertConfig
from bertcli.model import BertModel, activation, init_weights

POOLINGS = ("cls", "mean", "max")


def head_dropout(config: BertConfig, override: float | None = None) -> float:
    """A classifier head's dropout: the caller's, the checkpoint's ``classifier_dropout``, or hidden_dropout."""
    for p in (override, config.classifier_dropout):
        if p is not None:
            return p
    return config.hidden_dropout


def head_activation(name: str) -> nn.Module:
    return nn.Tanh() if name == "tanh" else activation(name)


class PredictionHead(nn.Module):
    """ModernBERT's head: dense (H -> H) + activation + LayerNorm, before its classifiers and its MLM decoder."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.head_bias)
        self.act = head_activation(config.cls_head_activation)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.norm_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden)))


def token_head(config: BertConfig) -> nn.Module:
    """What runs on each token before a token / span classifier: ModernBERT's head, else nothing."""
    return PredictionHead(config) if config.cls_head == "prediction" else nn.Identity()


class MLMHead(nn.Module):
    """dense (H -> E) + activation + LayerNorm, then a decoder tied to the word embeddings, plus a bias
    (ModernBERT: its head's activation and biases, the decoder bias optional)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        prediction = config.cls_head == "prediction"
        self.dense = nn.Linear(config.hidden_size, config.word_size, bias=config.head_bias)
        self.act = (head_activation(config.cls_head_activation) if prediction
                    else activation(config.mlm_activation or config.activation))
        self.norm = nn.LayerNorm(config.word_size, eps=config.layer_norm_eps, bias=config.norm_bias)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.decoder_bias else None

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states and the (V, E) word-embedding matrix -> (..., V) logits."""
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


class ReplacedTokenHead(nn.Module):
    """ELECTRA's discriminator: dense + activation + linear to one logit per token (replaced or not)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.activation)
        self.out = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.dense(hidden))).squeeze(-1)  # (B, T)


class BertForReplacedTokenDetection(nn.Module):
    """Encoder + ELECTRA's discriminator head (``ElectraForPreTraining``): (B, T) logits."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, with_pooler=False)
        self.rtd = ReplacedTokenHead(config)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.rtd(self.bert(input_ids, attention_mask, token_type_ids))


class BertForSequenceClassification(nn.Module):
    """A sentence vector -> dropout -> linear (num_labels; 1 for regression).

    The sentence vector is the pooler output (``cls_head`` "pooler": BERT, ALBERT), for a dense
    head (RoBERTa, XLM-R, ELECTRA, DistilBERT) ``act(pre_classifier(dropout(h[<s>])))``, or for
    ModernBERT's ("prediction") ``head(h[CLS])`` or ``head(mean of h)`` by ``classifier_pooling``.
    """

    def __init__(self, config: BertConfig, num_labels: int, classifier_dropout: float | None = None):
        super().__init__()
        self.config = config
        dense = config.cls_head == "dense"
        prediction = config.cls_head == "prediction"
        self.bert = BertModel(config, with_pooler=config.cls_head == "pooler")
        self.dropout = nn.Dropout(head_dropout(config, classifier_dropout))
        self.pre_classifier = nn.Linear(config.hidden_size, config.hidden_size) if dense else None
        self.pre_act = head_activation(config.cls_head_activation)
        self.pre_dropout = self.dropout if config.cls_head_input_dropout else nn.Identity()
        self.head = PredictionHead(config) if prediction else None
        self.pooling = config.classifier_pooling
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.sentence = self._dense if dense else self._predicted if prediction else self._pooled
        init_weights(self, config.initializer_range)

    def _pooled(self, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        return self.bert.pooler(hidden)  # (B, H)

    def _dense(self, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        return self.pre_act(self.pre_classifier(self.pre_dropout(hidden[:, 0])))  # (B, H)

    def _predicted(self, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return self.head(pool(hidden, attention_mask, self.pooling))  # (B, H)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.sentence(hidden, attention_mask)))  # (B, num_labels)


class BertForTokenClassification(nn.Module):
    """Every token's hidden state -> dropout -> linear (num_labels)."""

    def __init__(self, config: BertConfig, num_labels: int, classifier_dropout: float | None = None):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, with_pooler=False)
        self.head = token_head(config)
        self.dropout = nn.Dropout(head_dropout(config, classifier_dropout))
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.head(hidden)))  # (B, T, num_labels)


class BertForQuestionAnswering(nn.Module):
    """Span head: every token's hidden state -> (start, end) logits."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, with_pooler=False)
        self.head = token_head(config)  # ModernBERT: head + dropout before the span layer
        self.dropout = nn.Dropout(head_dropout(config)) if config.cls_head == "prediction" else nn.Identity()
        self.qa = nn.Linear(config.hidden_size, 2)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        start, end = self.qa(self.dropout(self.head(hidden))).unbind(-1)  # 2 x (B, T)
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
