"""The BERT encoder core: embeddings, post-LN transformer layers, and nothing else.

The family (RoBERTa, XLM-R, DistilBERT, ALBERT, ELECTRA) is the same core switched by config fields,
decided once when the modules are built: position ids (absolute or RoBERTa's padding offset), token
types (2, 1 or none), a factorised-embedding projection (E -> H), and ALBERT's shared layer groups.

Shapes: B = batch, T = sequence length, H = hidden size, N = heads, D = head size (H / N),
I = intermediate size, E = word-embedding size (``config.word_size``). Parameter names here are short; ``checkpoint.py`` maps them to the
Hugging Face names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertcli.config import BertConfig


def activation(name: str):
    if name == "gelu":  # exact (erf) GELU, as in BERT
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(name)


def absolute_positions(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    return torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)


def padding_offset_positions(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """RoBERTa's ids: real tokens count from pad_id + 1, padding sits at pad_id."""
    real = input_ids.ne(pad_id).int()  # (B, T)
    return (torch.cumsum(real, dim=1) * real).long() + pad_id  # (B, T)


POSITIONS = {"absolute": absolute_positions, "padding_offset": padding_offset_positions}


class Embeddings(nn.Module):
    """word + position (+ token-type) embeddings of width E, LayerNorm, dropout (+ projection E -> H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        E = config.word_size
        self.pad_id = config.pad_token_id
        self.positions = POSITIONS[config.position_scheme]
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_positions, E)
        # 0 types: none (DistilBERT); 1 type: a constant row, whatever ids come in (RoBERTa)
        self.token_type = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size else None
        self.add_types = (self._no_types if not config.type_vocab_size else
                          self._first_type if config.type_vocab_size == 1 else self._types)
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.project = nn.Linear(E, config.hidden_size) if config.embedding_size is not None else nn.Identity()

    def _no_types(self, x, token_type_ids):
        return x

    def _first_type(self, x, token_type_ids):
        return x + self.token_type.weight[0]

    def _types(self, x, token_type_ids):
        return self._first_type(x, None) if token_type_ids is None else x + self.token_type(token_type_ids)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.word(input_ids) + self.position(self.positions(input_ids, self.pad_id))  # (B, T, E)
        x = self.add_types(x, token_type_ids)
        return self.project(self.dropout(self.norm(x)))  # (B, T, H)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, residual and post-LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.attn_dropout = config.attention_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        N = self.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, N, H // N).permute(2, 0, 3, 1, 4)  # 3 x (B, N, T, D)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, N, T, D)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.norm(x + self.dropout(self.out(y)))


class FeedForward(nn.Module):
    """Position-wise feed-forward (H -> I -> H) with residual and post-LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.activation)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.down(self.act(self.up(x)))))


class Layer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attn = Attention(config)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.ffn(self.attn(x, mask))


class Pooler(nn.Module):
    """dense + tanh on the [CLS] hidden state (the input of NSP and of sequence classifiers)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


class BertModel(nn.Module):
    """The encoder: ``forward`` returns the last hidden states (B, T, H).

    ``pooler`` is present when ``with_pooler`` is true; call ``self.pooler(hidden)`` for it.
    """

    def __init__(self, config: BertConfig, with_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_built_layers))
        self.schedule = config.layer_schedule  # ALBERT runs shared layers several times
        self.pooler = Pooler(config) if with_pooler else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T): True = attend
        for i in self.schedule:
            x = self.layers[i](x, mask)
        return x

    @property
    def device(self) -> torch.device:
        return self.embeddings.word.weight.device


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation: normal(0, std) weights, zero biases, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total

