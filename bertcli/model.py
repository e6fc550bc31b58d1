"""The BERT encoder core: embeddings, post-LN transformer layers, and nothing else.

The family (RoBERTa, XLM-R, DistilBERT, ALBERT, ELECTRA, DeBERTa-v2/v3) is the same core switched by
config fields, decided once when the modules are built: position ids (absolute or RoBERTa's padding
offset), token types (2, 1 or none), a factorised-embedding projection (E -> H), ALBERT's shared
layer groups, and DeBERTa's relative positions (``position_scheme`` "relative": its own embeddings,
a ``RelativePositions`` table the encoder computes once per forward and hands to every layer as
``positions``, and ``DisentangledAttention`` in the layers).

Shapes: B = batch, T = sequence length, H = hidden size, N = heads, D = head size (H / N),
I = intermediate size, E = word-embedding size (``config.word_size``). Parameter names here are short; ``checkpoint.py`` maps them to the
Hugging Face names.
"""

from __future__ import annotations

import math

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

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, positions=None) -> torch.Tensor:
        B, T, H = x.shape
        N = self.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, N, H // N).permute(2, 0, 3, 1, 4)  # 3 x (B, N, T, D)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, N, T, D)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.norm(x + self.dropout(self.out(y)))


# ------------------------------------------------------------------ DeBERTa (position_scheme "relative")
class DebertaEmbeddings(Embeddings):
    """DeBERTa's: word (+ absolute position if ``position_biased_input``) (+ token-type) embeddings of width
    E, a projection E -> H without bias, LayerNorm on H, padding rows zeroed, dropout."""

    def __init__(self, config: BertConfig):
        nn.Module.__init__(self)
        E = config.word_size
        self.pad_id = config.pad_token_id
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_positions, E) if config.position_biased_input else None
        self.add_positions = self._positions if config.position_biased_input else self._no_positions
        self.token_type = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size else None
        self.add_types = (self._no_types if not config.type_vocab_size else
                          self._first_type if config.type_vocab_size == 1 else self._types)
        self.project = nn.Linear(E, config.hidden_size, bias=False) if config.embedding_size is not None else nn.Identity()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def _no_positions(self, x):
        return x

    def _positions(self, x):
        return x + self.position(absolute_positions(x, self.pad_id))

    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor:
        x = self.add_types(self.add_positions(self.word(input_ids)), token_type_ids)  # (B, T, E)
        x = self.norm(self.project(x))  # (B, T, H)
        if attention_mask is not None:
            x = x * attention_mask.unsqueeze(-1).to(x.dtype)  # padding rows are zero, as in transformers
        return self.dropout(x)


def log_buckets(rel: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """DeBERTa's log buckets of relative distances: exact within +-buckets/2, logarithmic beyond, up to
    +-buckets at ``max_position`` (the arithmetic of transformers' ``make_log_bucket_position``)."""
    sign = torch.sign(rel)
    mid = buckets // 2
    near = (rel < mid) & (rel > -mid)
    abs_pos = torch.where(near, torch.tensor(mid - 1).type_as(rel), rel.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, rel.type_as(log_pos), log_pos * sign).long()


class RelativePositions(nn.Module):
    """DeBERTa's relative positions, computed once per forward for every layer.

    The table has 2S rows (S = ``relative_span``); the distance i - j of query i and key j (log-bucketed
    when ``position_buckets`` > 0) reads row clamp(S + bucket(i - j), 0, 2S - 1). ``forward(T)`` returns
    the rows a length-T input can reach (layer-normed with ``norm_rel_ebd``) and the (T, T) index into
    them: a short input never projects the rows it cannot use.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.span = config.relative_span
        self.buckets, self.max_position = config.position_buckets, config.relative_max_distance
        self.embeddings = nn.Embedding(2 * self.span, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_rel_ebd else nn.Identity()
        self._index: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (CPU, device) index

    def index(self, T: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
        """The (T, T) table rows of each query-key pair, counted from ``lo``, and the rows [lo, hi) used.

        One index for the longest input seen so far (per device); a shorter input uses its top-left
        block (the row depends on i - j only), so nothing is rebuilt per length."""
        cpu, dev = self._index.get(str(device), (None, None))
        if cpu is None or cpu.shape[0] < T:
            ids = torch.arange(T)
            rel = ids[:, None] - ids[None, :]  # (T, T): query - key
            if self.buckets > 0 and self.max_position > 0:
                rel = log_buckets(rel, self.buckets, self.max_position)
            cpu = (rel + self.span).clamp(0, 2 * self.span - 1)  # (T, T) rows of the table
            dev = cpu.to(device)
            self._index[str(device)] = (cpu, dev)
        lo, hi = int(cpu[0, T - 1]), int(cpu[T - 1, 0]) + 1  # the farthest distances either way
        return dev[:T, :T] - lo, lo, hi

    def forward(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        index, lo, hi = self.index(T, device)
        return self.norm(self.embeddings.weight[lo:hi]), index  # (R, H), (T, T) in [0, R)


class NoRelativePositions(nn.Module):
    """The families without relative positions: the layers get ``positions=None``."""

    def forward(self, T: int, device: torch.device) -> None:
        return None


class DisentangledAttention(Attention):
    """DeBERTa's attention: content-to-content plus content-to-position (c2p: q_i . Kr[i-j]) and
    position-to-content (p2c: k_j . Qr[i-j]) terms over the relative table, all scaled by
    1 / sqrt(D * (1 + number of terms)); the position terms enter SDPA as an additive bias.

    The relative rows are projected with the layer's own query / key weights (``share_att_key``) or
    with separate ``pos_query`` / ``pos_key`` projections.
    """

    def __init__(self, config: BertConfig):
        super().__init__(config)
        H = config.hidden_size
        self.c2p, self.p2c = "c2p" in config.pos_att_type, "p2c" in config.pos_att_type
        self.scale = 1.0 / math.sqrt(config.head_dim * (1 + self.c2p + self.p2c))
        self.pos_dropout = nn.Dropout(config.hidden_dropout)
        shared = config.share_att_key
        self.pos_key = nn.Linear(H, H) if self.c2p and not shared else None
        self.pos_query = nn.Linear(H, H) if self.p2c and not shared else None
        self.project_positions = self._shared if shared else self._separate

    def _shared(self, rel: torch.Tensor):
        H = rel.shape[-1]
        pq, pk = F.linear(rel, self.qkv.weight[:2 * H], self.qkv.bias[:2 * H]).split(H, dim=-1)  # 2 x (R, H)
        return pq, pk

    def _separate(self, rel: torch.Tensor):
        return (self.pos_query(rel) if self.pos_query is not None else None,
                self.pos_key(rel) if self.pos_key is not None else None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, positions=None) -> torch.Tensor:
        B, T, H = x.shape
        N = self.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, N, H // N).permute(2, 0, 3, 1, 4)  # 3 x (B, N, T, D)
        rel, index = positions  # (R, H) relative rows, (T, T) row of each query-key pair
        pq, pk = self.project_positions(self.pos_dropout(rel))
        idx = index.expand(B, N, T, T)
        bias = None
        if self.c2p:
            pk = pk.view(-1, N, H // N).transpose(0, 1)  # (N, R, D)
            bias = torch.gather(q @ pk.transpose(-1, -2), -1, idx)  # (B, N, T, R) -> (B, N, T, T)
        if self.p2c:
            pq = pq.view(-1, N, H // N).transpose(0, 1)  # (N, R, D)
            # p2c[i, j] = k_j . pq[index[i, j]]: gather along the key's row, then transpose
            p2c = torch.gather(k @ pq.transpose(-1, -2), -1, idx.transpose(-1, -2)).transpose(-1, -2)
            bias = p2c if bias is None else bias + p2c
        if bias is not None:
            bias = bias * self.scale
            if mask is not None:
                bias = bias.masked_fill(~mask, torch.finfo(bias.dtype).min)
            mask = bias
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0, scale=self.scale
        )  # (B, N, T, D)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.norm(x + self.dropout(self.out(y)))


# ------------------------------------------------------------------ the rest of the layer
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
        self.attn = (DisentangledAttention if config.position_scheme == "relative" else Attention)(config)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, positions=None) -> torch.Tensor:
        """``positions``: what the encoder's position provider computed once per forward (DeBERTa's
        relative rows and index), or None."""
        return self.ffn(self.attn(x, mask, positions))


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
        relative = config.position_scheme == "relative"
        self.embeddings = (DebertaEmbeddings if relative else Embeddings)(config)
        self.relative = RelativePositions(config) if relative else NoRelativePositions()
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_built_layers))
        self.schedule = config.layer_schedule  # ALBERT runs shared layers several times
        self.pooler = Pooler(config) if with_pooler else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T): True = attend
        positions = self.relative(input_ids.shape[1], x.device)
        for i in self.schedule:
            x = self.layers[i](x, mask, positions)
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

