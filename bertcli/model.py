"""The BERT encoder core: embeddings, transformer layers, and nothing else.

The family (RoBERTa, XLM-R, DistilBERT, ALBERT, ELECTRA, DeBERTa-v2/v3, ModernBERT) is the same core
switched by config fields, decided once when the modules are built: position ids (absolute, RoBERTa's
padding offset, or rotary), token types (2, 1 or none), a factorised-embedding projection (E -> H),
ALBERT's shared layer groups, DeBERTa's relative positions (``position_scheme`` "relative": its own
embeddings, a ``RelativePositions`` table the encoder computes once per forward and hands to every layer
on the plan, and ``DisentangledAttention`` in the layers), and ModernBERT's pre-norm layers (GeGLU, no
biases, global and sliding-window local attention).

The layers read their attention context from a *plan* made once per forward pass: ``Padded`` (the batch
as it comes, padding masked: BERT's path and ModernBERT's reference) or ``Packed`` (ModernBERT's unpadded
execution: the real tokens of the batch in one stream of M tokens with per-sequence boundaries, so no
projection, MLP or attention is computed on padding).

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


POSITIONS = {"absolute": absolute_positions, "padding_offset": padding_offset_positions, "rotary": None}


class Embeddings(nn.Module):
    """word + position (+ token-type) embeddings of width E, LayerNorm, dropout (+ projection E -> H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        E = config.word_size
        self.pad_id = config.pad_token_id
        self.positions = POSITIONS[config.position_scheme]
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        # rotary positions (ModernBERT) enter in attention, not here
        self.position = nn.Embedding(config.max_positions, E) if self.positions is not None else None
        self.add_positions = self._positions if self.positions is not None else self._no_positions
        # 0 types: none (DistilBERT); 1 type: a constant row, whatever ids come in (RoBERTa)
        self.token_type = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size else None
        self.add_types = (self._no_types if not config.type_vocab_size else
                          self._first_type if config.type_vocab_size == 1 else self._types)
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps, bias=config.norm_bias)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.project = nn.Linear(E, config.hidden_size) if config.embedding_size is not None else nn.Identity()

    def _positions(self, x, input_ids):
        return x + self.position(self.positions(input_ids, self.pad_id))

    def _no_positions(self, x, input_ids):
        return x

    def _no_types(self, x, token_type_ids):
        return x

    def _first_type(self, x, token_type_ids):
        return x + self.token_type.weight[0]

    def _types(self, x, token_type_ids):
        return self._first_type(x, None) if token_type_ids is None else x + self.token_type(token_type_ids)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.add_positions(self.word(input_ids), input_ids)  # (B, T, E), or (M, E) packed
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
            cpu = self.table_index(T, "cpu")  # (T, T) rows of the table
            dev = cpu.to(device)
            self._index[str(device)] = (cpu, dev)
        lo, hi = int(cpu[0, T - 1]), int(cpu[T - 1, 0]) + 1  # the farthest distances either way
        return dev[:T, :T] - lo, lo, hi

    def forward(self, T: int, device: torch.device, traced: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if traced:  # an exported graph: T is symbolic, so no cache and no rows cut by value; the whole table
            return self.norm(self.embeddings.weight), self.table_index(T, device)  # (2S, H), (T, T)
        index, lo, hi = self.index(T, device)
        return self.norm(self.embeddings.weight[lo:hi]), index  # (R, H), (T, T) in [0, R)

    def table_index(self, T: int, device) -> torch.Tensor:
        """(T, T): the table row of each query-key pair, clamp(S + bucket(i - j), 0, 2S - 1)."""
        ids = torch.arange(T, device=device)
        rel = ids[:, None] - ids[None, :]  # (T, T): query - key
        if self.buckets > 0 and self.max_position > 0:
            rel = log_buckets(rel, self.buckets, self.max_position)
        return (rel + self.span).clamp(0, 2 * self.span - 1)


class NoRelativePositions(nn.Module):
    """The families without relative positions: the layers get ``positions=None``."""

    def forward(self, T: int, device: torch.device, traced: bool = False) -> None:
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
    """BERT's post-LN layer: attention (+ residual, norm), then feed-forward (+ residual, norm)."""

    def __init__(self, config: BertConfig, index: int = 0):
        super().__init__()
        self.attn = (DisentangledAttention if config.position_scheme == "relative" else Attention)(config)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, plan: Padded) -> torch.Tensor:
        """``plan.relative``: what the encoder's position provider computed once per forward (DeBERTa's
        relative rows and index), or None."""
        return self.ffn(self.attn(x, plan.mask, plan.relative))


# ------------------------------------------------------------------ ModernBERT's layer
def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of q or k (..., N, D) with (..., 1, D) tables, in fp32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


class Rotary(nn.Module):
    """cos / sin tables of rotary positions for each base (ModernBERT: global and local bases)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.bases = sorted({config.rope_theta, config.local_rope_theta or config.rope_theta})

    def tables(self, positions: torch.Tensor) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
        """positions (P,) -> {base: (cos, sin)}, each (P, 1, D) float32 (whatever the model's dtype)."""
        out = {}
        D = self.head_dim
        for base in self.bases:
            inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float, device=positions.device) / D))  # (D/2,)
            freqs = positions.float()[:, None] * inv[None, :]  # (P, D/2)
            emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # (P, 1, D)
            out[base] = (emb.cos(), emb.sin())
        return out


class RotaryAttention(nn.Module):
    """Self-attention with rotary q / k, global or within a sliding window; no residual or norm inside."""

    def __init__(self, config: BertConfig, index: int):
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_heads
        self.window = config.layer_window(index)  # None: global
        self.base = config.rope_theta if self.window is None else (config.local_rope_theta or config.rope_theta)
        self.qkv = nn.Linear(H, 3 * H, bias=config.attention_bias)
        self.out = nn.Linear(H, H, bias=config.attention_bias)
        self.attn_dropout = config.attention_dropout
        self.dropout = nn.Dropout(config.attention_dropout)

    def forward(self, x: torch.Tensor, plan) -> torch.Tensor:
        N = self.num_heads
        qkv = self.qkv(x).view(*x.shape[:-1], 3, N, -1)  # (B, T, 3, N, D) or (M, 3, N, D)
        cos, sin = plan.rotary[self.base]
        q, k = rotate(qkv[..., :2, :, :], cos[..., None, :, :], sin[..., None, :, :]).unbind(-3)  # q and k at once
        v = qkv[..., 2, :, :]
        y = plan.attend(q, k, v, self.window, self.attn_dropout if self.training else 0.0)  # like q
        return self.dropout(self.out(y.flatten(-2)))


class GluFeedForward(nn.Module):
    """GeGLU: one fused up projection H -> 2I, act(input) * gate, down I -> H; no residual or norm inside."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.act = activation(config.activation)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.up(x).chunk(2, dim=-1)
        return self.down(self.dropout(self.act(inp) * gate))


class PreNormLayer(nn.Module):
    """Pre-LN layer: x + attn(norm(x)), then x + ffn(norm(x)). Layer 0 reads the embedding norm's output
    directly (no attn_norm), as ModernBERT does. Works on padded (B, T, H) and packed (M, H) tokens alike."""

    def __init__(self, config: BertConfig, index: int):
        super().__init__()
        norm = lambda: nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.norm_bias)  # noqa: E731
        self.attn_norm = norm() if index > 0 else nn.Identity()
        self.attn = RotaryAttention(config, index)
        self.ffn_norm = norm()
        self.ffn = GluFeedForward(config)

    def forward(self, x: torch.Tensor, plan) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), plan)
        return x + self.ffn(self.ffn_norm(x))


LAYERS = {"post": Layer, "pre": PreNormLayer}


# ------------------------------------------------------------------ attention plans
def band(positions: torch.Tensor, reach: int) -> torch.Tensor:
    """(P, P) True where |i - j| <= reach."""
    return (positions[:, None] - positions[None, :]).abs() <= reach


class Padded:
    """The batch as it comes (B, T): padding masked in attention; local layers add a band mask."""

    relative = None  # DeBERTa's relative-position rows and index, set by the encoder

    def __init__(self, attention_mask: torch.Tensor | None, T: int, device, rotary: Rotary | None,
                 always_mask: bool = False):
        # always_mask: keep the mask even when nothing is padded (a traced graph must not branch on data)
        keep = (None if attention_mask is None or (not always_mask and bool(attention_mask.all()))
                else attention_mask.bool())
        self.mask = keep[:, None, None, :] if keep is not None else None  # (B, 1, 1, T): True = attend
        self.T, self.device, self.always_mask = T, device, always_mask
        self.rotary = rotary.tables(torch.arange(T, device=device)) if rotary is not None else None
        self._masks: dict[int, torch.Tensor | None] = {}

    def pack(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return t

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def window_mask(self, reach: int | None) -> torch.Tensor | None:
        if reach is None or (not self.always_mask and reach >= self.T - 1):  # traced: T is symbolic
            return self.mask
        if reach not in self._masks:
            b = band(torch.arange(self.T, device=self.device), reach)  # (T, T)
            self._masks[reach] = b if self.mask is None else self.mask & b  # (B, 1, T, T)
        return self._masks[reach]

    def attend(self, q, k, v, reach: int | None, dropout_p: float) -> torch.Tensor:
        """q, k, v (B, T, N, D) -> (B, T, N, D)."""
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=self.window_mask(reach), dropout_p=dropout_p)
        return y.transpose(1, 2)


class Packed:
    """Unpadded execution: the batch's M real tokens in one stream (M, H), sequences at ``cu_seqlens``.

    Attention never spans two sequences. ``block`` (the default off CPU): the sequences of up to ``GROUP``
    tokens are packed whole, in order, into G groups of at most ``GROUP`` tokens, and one SDPA call
    runs on (G, N, S, D) with a block-diagonal (+ band) mask per group, so the work is bounded by
    G x S^2 whatever the spread of lengths; longer sequences, and every sequence in ``loop`` mode, get
    one SDPA call each (``loop``, the default on CPU; a band mask where a local layer's window is shorter than the sequence, or
    windowed blocks where it is much shorter: see ``local_attention``).
    """

    GROUP = 512
    relative = None  # DeBERTa never runs packed

    def __init__(self, attention_mask: torch.Tensor, rotary: Rotary, mode: str):
        B, T = attention_mask.shape
        keep = attention_mask.bool()
        dev = keep.device
        self.shape = (B, T)
        self.index = keep.flatten().nonzero().squeeze(1)  # (M,) positions in the flattened (B*T) batch
        lengths = keep.sum(1)  # (B,)
        starts = torch.cumsum(lengths, 0) - lengths  # (B,)
        M = int(self.index.numel())
        self.M = M
        seq = torch.repeat_interleave(torch.arange(B, device=dev), lengths)  # (M,) sequence of each token
        self.positions = torch.arange(M, device=dev) - starts[seq]  # (M,) position in its sequence
        self.cu_seqlens = [0, *torch.cumsum(lengths, 0).tolist()]
        self.rotary = rotary.tables(self.positions)
        spans = [(s, e) for s, e in zip(self.cu_seqlens[:-1], self.cu_seqlens[1:], strict=True) if e > s]
        self.alone = [(s, e) for s, e in spans if mode != "block" or e - s > self.GROUP]
        grouped = [(s, e) for s, e in spans if mode == "block" and e - s <= self.GROUP]
        groups: list[list[tuple[int, int]]] = []
        for s, e in grouped:  # greedy, in order: a sequence opens a new group when it does not fit
            if not groups or sum(b - a for a, b in groups[-1]) + e - s > self.GROUP:
                groups.append([])
            groups[-1].append((s, e))
        self.gather = None
        if groups:
            S = max(sum(b - a for a, b in g) for g in groups)
            gather = torch.full((len(groups), S), M, dtype=torch.long)  # M: a zero row past the stream
            seq_id = torch.full((len(groups), S), -1, dtype=torch.long)
            for gi, g in enumerate(groups):
                tokens = torch.cat([torch.arange(a, b) for a, b in g])
                gather[gi, :len(tokens)] = tokens
                seq_id[gi, :len(tokens)] = torch.cat([torch.full((b - a,), n) for n, (a, b) in enumerate(g)])
            self.gather, self.seq_id = gather.to(dev), seq_id.to(dev)  # (G, S)
            self.valid = self.seq_id >= 0  # (G, S)
            self.group_pos = torch.cat([self.positions, self.positions.new_zeros(1)])[self.gather]  # (G, S)
        self._masks: dict[int | None, torch.Tensor] = {}

    def pack(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.flatten()[self.index]  # (B, T) -> (M,)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        B, T = self.shape
        out = x.new_zeros(B * T, x.shape[-1])
        out[self.index] = x
        return out.view(B, T, -1)  # (B, T, H), zeros at padding

    def group_mask(self, reach: int | None) -> torch.Tensor:
        """(G, 1, S, S): same sequence of the group (and within reach); a padding row sees itself only."""
        if reach not in self._masks:
            m = (self.seq_id[:, :, None] == self.seq_id[:, None, :]) & self.valid[:, None, :]
            if reach is not None:
                m &= (self.group_pos[:, :, None] - self.group_pos[:, None, :]).abs() <= reach
            eye = torch.eye(m.shape[-1], dtype=torch.bool, device=m.device)
            self._masks[reach] = (m | (eye & ~self.valid[:, :, None]))[:, None]
        return self._masks[reach]

    def attend(self, q, k, v, reach: int | None, dropout_p: float) -> torch.Tensor:
        """q, k, v (M, N, D) -> (M, N, D)."""
        out = torch.empty_like(q) if self.alone or self.gather is not None else torch.zeros_like(q)
        if self.gather is not None:
            qkv = torch.stack((q, k, v), 1)  # (M, 3, N, D); one gather for the three
            qkv = torch.cat([qkv, qkv.new_zeros(1, *qkv.shape[1:])])[self.gather]  # (G, S, 3, N, D)
            qg, kg, vg = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (G, N, S, D)
            y = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=self.group_mask(reach),
                                               dropout_p=dropout_p).transpose(1, 2)  # (G, S, N, D)
            out = out.index_put((self.gather[self.valid],), y[self.valid])
        for s, e in self.alone:
            L = e - s
            qs, ks, vs = q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1)  # (N, L, D)
            if reach is not None and L > 4 * reach:
                y = local_attention(qs, ks, vs, reach, dropout_p)  # O(L * reach), not O(L^2)
            else:
                mask = band(torch.arange(L, device=q.device), reach) if reach is not None and reach < L - 1 else None
                # 4-d inputs: SDPA's fused CPU kernel takes (B, N, L, D) only, 3-d ones fall back to matmuls
                y = F.scaled_dot_product_attention(qs[None], ks[None], vs[None], attn_mask=mask, dropout_p=dropout_p)[0]
            out = out.index_put((torch.arange(s, e, device=q.device),), y.transpose(0, 1))  # (L, N, D)
        return out


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, reach: int, dropout_p: float = 0.0):
    """Sliding-window attention (|i - j| <= reach) of one sequence in blocks: q, k, v (N, L, D) -> (N, L, D).

    The L queries go in nb blocks of c = reach; block b attends to the 3c keys of blocks b-1, b, b+1
    (a band mask keeps exactly |i - j| <= reach), so the cost is L x 3 * reach instead of L x L.
    """
    N, L, D = q.shape
    c = reach
    nb = -(-L // c)
    pad = nb * c - L
    qb = F.pad(q, (0, 0, 0, pad)).view(N, nb, c, D).transpose(0, 1)  # (nb, N, c, D)

    def windows(t: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (nb, N, 3c, D)
        t = F.pad(t, (0, 0, c, pad + c))  # (N, (nb + 2) c, D)
        return t.unfold(1, 3 * c, c).permute(1, 0, 3, 2)

    i = torch.arange(c, device=q.device)
    jj = torch.arange(3 * c, device=q.device)
    rel = (jj[None, :] - c - i[:, None]).abs() <= reach  # (c, 3c)
    j = torch.arange(nb, device=q.device)[:, None] * c - c + jj[None, :]  # (nb, 3c) key positions
    mask = rel[None] & ((j >= 0) & (j < L))[:, None, :]  # (nb, c, 3c)
    y = F.scaled_dot_product_attention(qb, windows(k), windows(v), attn_mask=mask[:, None], dropout_p=dropout_p)
    return y.transpose(0, 1).reshape(N, nb * c, D)[:, :L]


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
        layer = LAYERS[config.norm_placement]
        self.layers = nn.ModuleList(layer(config, i) for i in range(config.num_built_layers))
        self.schedule = config.layer_schedule  # ALBERT runs shared layers several times
        pre = config.norm_placement == "pre"
        self.final_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.norm_bias)
                           if pre else nn.Identity())
        self.rotary = Rotary(config) if config.position_scheme == "rotary" else None
        # unpadded execution (ModernBERT's layers): True packs the real tokens of a padded batch;
        # False is the padded reference path. packed_attention: auto (loop on CPU, block elsewhere), block
        # or loop (see Packed).
        self.unpad = pre and self.rotary is not None
        self.packed_attention = "auto"
        self.exporting = False  # bertcli.export: padded path, mask always applied (no data-dependent branches)
        self.pooler = Pooler(config) if with_pooler else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        plan = self.plan(input_ids, attention_mask)
        plan.relative = self.relative(input_ids.shape[1], input_ids.device, self.exporting)  # DeBERTa's, else None
        x = self.embeddings(plan.pack(input_ids), plan.pack(token_type_ids), plan.pack(attention_mask))
        for i in self.schedule:
            x = self.layers[i](x, plan)
        return plan.unpack(self.final_norm(x))  # (B, T, H)

    def plan(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Padded | Packed:
        """How this batch runs: packed when unpadding is on (ModernBERT), else padded."""
        if self.exporting:
            return Padded(attention_mask, input_ids.shape[1], input_ids.device, self.rotary, always_mask=True)
        if self.unpad:
            if attention_mask is None:
                attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
            mode = self.packed_attention
            if mode == "auto":  # measured (benchmarks/bench_modernbert.py): per sequence on CPU, grouped elsewhere
                mode = "loop" if input_ids.device.type == "cpu" else "block"
            return Packed(attention_mask, self.rotary, mode)
        return Padded(attention_mask, input_ids.shape[1], input_ids.device, self.rotary)

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
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total

