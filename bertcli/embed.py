"""Sentence embeddings and cosine similarity.

``encode(texts, model)`` returns one vector per text, in input order, as a tensor (or a numpy
array with ``return_numpy=True``). ``model`` is a checkpoint directory or an :class:`Encoder`
from :func:`load` (load once, call many times; a path is also cached, so repeated calls with
the same directory do not reload it). ``embed()`` does the same and also returns statistics
(count, dimension, truncated texts, tokens, time). ``similarity(a, b)`` is cosine similarity.

Defaults come from the checkpoint: a sentence-transformers model's pooling, normalisation and
``max_seq_length`` (``modules.json``, ``1_Pooling/config.json``, a ``Normalize`` module);
otherwise mean pooling, normalised, up to the model's position table.

Speed: texts are tokenized once (the ids-only fast path), sorted by length and cut into
batches of at most ``batch_tokens`` tokens (padded size). A batch is closed early at a length
change once it is half full, so most batches hold texts of exactly one length and run with no
padding and no attention mask at all; the rest pad by a token or two. Everything runs under
``torch.inference_mode``; vectors are scattered back to input order on the device and copied
to the host once.

Large inputs: :func:`embed_chunks` runs :func:`embed_poolings` one chunk at a time (sorted and batched
by length within the chunk) and :func:`embed_file` streams a file (or stdin) to an output file in
bounded memory (see :mod:`bertcli.streaming`); :func:`score_pair_chunks` does the same for pairs.

Empty texts are encoded as ``[CLS] [SEP]`` and get an ordinary, valid vector (the same vector
for every empty text); texts longer than ``max_length`` tokens are truncated and counted in
``EmbedStats.truncated``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError, DataError
from bertcli.heads import POOLINGS

OUTPUT_SUFFIXES = (".npy", ".safetensors", ".jsonl")
# Padded tokens per batch. On a CPU, small batches keep activations in cache (measured:
# 2048 is faster than 8192 for MiniLM); on a GPU bigger batches fill the device.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768, "mps": 8192}


@dataclass
class Encoder:
    """A loaded encoder with its tokenizer and the checkpoint's sentence-embedding defaults."""

    model: Any  # bertcli.model.BertModel, eval mode, on ``device``
    tokenizer: Any  # bertcli.tokenizer.Tokenizer
    checkpoint: Any  # bertcli.checkpoint.Checkpoint
    device: Any  # torch.device
    precision: str  # "fp32" | "bf16" | "fp16"
    pooling: str
    normalize: bool
    max_length: int

    @property
    def dim(self) -> int:
        return self.checkpoint.config.hidden_size


@dataclass
class EmbedStats:
    count: int
    dim: int
    truncated: int
    tokens: int
    batches: int
    seconds: float
    pooling: str
    normalize: bool
    max_length: int
    device: str
    precision: str
    windowed: int = 0  # --long-input window: texts split into windows (their vectors: the windows' mean)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EmbedResult:
    vectors: Any  # torch.Tensor (N, H) float32 on the CPU, or a numpy array
    stats: EmbedStats


_CACHE: dict[tuple, Encoder] = {}


def _encoder_for(model, tok, ckpt, device, precision: str) -> Encoder:
    """An Encoder with the checkpoint's sentence-transformers settings (else mean pooling, normalised,
    the model's max length)."""
    sentence = ckpt.sentence or {}
    return Encoder(
        model=model, tokenizer=tok, checkpoint=ckpt, device=device, precision=precision,
        pooling=sentence.get("pooling") or "mean",
        normalize=bool(sentence.get("normalize", True)) if sentence else True,
        max_length=min(int(sentence.get("max_seq_length") or ckpt.config.max_length), ckpt.config.max_length),
    )


def load(model: str | Path, *, device: str = "auto", precision: str = "auto") -> Encoder:
    """Load a checkpoint directory for embedding (cached: the same arguments return the same Encoder)."""
    from bertcli.device import resolve_device, resolve_precision

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    key = (str(Path(model).resolve()), str(dev), prec)
    if key in _CACHE:
        return _CACHE[key]
    from bertcli.checkpoint import load_encoder

    enc_model, tok, ckpt = load_encoder(model, dev)
    encoder = _encoder_for(enc_model, tok, ckpt, dev, prec)
    _CACHE.clear()  # keep one model in memory, not every one ever used
    _CACHE[key] = encoder
    return encoder


def _as_encoder(model: Any, device: str, precision: str) -> Encoder:
    if isinstance(model, Encoder):
        return model
    if isinstance(model, tuple) and len(model) == 3:  # (BertModel, Tokenizer, Checkpoint) from load_encoder
        from bertcli.device import resolve_precision

        m, tok, ckpt = model
        return _encoder_for(m.eval(), tok, ckpt, m.device, resolve_precision(precision, m.device))
    if isinstance(model, (str, Path)):
        return load(model, device=device, precision=precision)
    raise TypeError(f"model must be a checkpoint directory or an Encoder, not {type(model).__name__}")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ConfigError(f"--pooling {pooling}: unknown pooling; valid: {', '.join(POOLINGS)}")
    return pooling


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches: longest first, at most ``batch_tokens`` padded tokens each.

    A batch is closed at a change of length once it is at least half full, so most batches
    hold texts of one length (no padding, no attention mask). A text longer than the budget
    gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order:
        n = lengths[i]
        if cur and ((len(cur) + 1) * width > batch_tokens or (n != width and 2 * len(cur) * width >= batch_tokens)):
            batches.append(cur)
            cur = []
        if not cur:
            width = n
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _progress_bar(total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("texts"),
        TimeRemainingColumn(), console=Console(stderr=True, highlight=False), transient=True,
    )


def embed_poolings(
    texts: Sequence[str],
    model: Any,
    poolings: Sequence[str],
    *,
    normalize: bool | None = None,
    max_length: int | None = None,
    batch_tokens: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool | Callable[[int, int], None] = False,
    long_input: str = "truncate",
    stride: int = 128,
) -> tuple[dict[str, Any], EmbedStats]:
    """One encoder pass over ``texts``, pooled each way in ``poolings``: ({pooling: (N, H) float32 CPU tensor}, stats).

    ``progress`` is True (a rich bar on stderr) or a callable ``(done, total)``. ``long_input="window"``
    embeds a long text as the mean of its overlapping windows' vectors (``bertcli.windows``).
    """
    from bertcli.tokenizer import check_max_length

    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings; wrap a single text in a list")
    enc = _as_encoder(model, device, precision)
    poolings = [check_pooling(p) for p in (poolings or [enc.pooling])]
    normalize = enc.normalize if normalize is None else normalize
    limit = enc.max_length if max_length is None else check_max_length(max_length, enc.checkpoint.config.max_length)
    budget = batch_tokens or DEFAULT_BATCH_TOKENS.get(enc.device.type, 4096)
    if budget < 1:
        raise ConfigError(f"--batch-tokens must be positive, got {budget}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text {i} is a {type(t).__name__}, not a string")

    from bertcli.windows import check as check_windows
    from bertcli.windows import combine, encode_texts

    check_windows(long_input, stride)
    start = time.perf_counter()
    encoded = encode_texts(enc.tokenizer, texts, None, limit, long_input, stride)
    ids, truncated, windowed = encoded.ids, encoded.truncated, encoded.windowed
    lengths = [len(x) for x in ids]
    n, texts_n = len(ids), len(texts)  # n: rows (windows) to encode
    per_window_norm = bool(normalize) and long_input == "truncate"
    bar = None
    report = progress if callable(progress) else None
    if progress is True:
        bar = _progress_bar(n)
        bar.start()
        task = bar.add_task("embed", total=n)
        report = lambda done, total: bar.update(task, completed=done)  # noqa: E731
    try:
        out, n_batches = embed_token_ids(ids, enc, poolings, normalize=per_window_norm, batch_tokens=budget,
                                         progress=report)
    finally:
        if bar is not None:
            bar.stop()
    result = {p: v.cpu() for p, v in out.items()}
    if long_input != "truncate":  # one vector per text: the mean of its windows', then normalised
        result = {p: combine(v, encoded.doc, texts_n, "mean") for p, v in result.items()}
        if normalize:
            import torch.nn.functional as F

            result = {p: F.normalize(v, dim=-1) for p, v in result.items()}
    stats = EmbedStats(
        count=texts_n, dim=enc.dim, truncated=truncated, tokens=sum(lengths), batches=n_batches,
        seconds=time.perf_counter() - start, pooling=",".join(poolings), normalize=normalize,
        max_length=limit, device=str(enc.device), precision=enc.precision, windowed=windowed,
    )
    return result, stats


def embed_token_ids(
    ids: Sequence[Sequence[int]],
    enc: Encoder,
    poolings: Sequence[str],
    *,
    normalize: bool,
    batch_tokens: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], int]:
    """The encoder pass over already tokenized texts: ({pooling: (N, H) float32 tensor on the device}, batches).

    Length-sorted batches of at most ``batch_tokens`` padded tokens (:func:`plan_batches`), rows
    scattered back to input order. :func:`embed_poolings` tokenizes and calls this; the HTTP server
    tokenizes each request itself and calls this once per dynamic batch.
    """
    import torch
    import torch.nn.functional as F

    from bertcli.device import autocast
    from bertcli.heads import pool
    from bertcli.tokenizer import pad_batch

    batches = plan_batches([len(x) for x in ids], batch_tokens)
    n, H, dev = len(ids), enc.dim, enc.device
    out = {p: torch.empty((n, H), dtype=torch.float32, device=dev) for p in poolings}
    cuda = dev.type == "cuda"
    done = 0
    with torch.inference_mode(), autocast(dev, enc.precision):
        for batch in batches:
            input_ids, mask, _ = pad_batch([ids[i] for i in batch], None, enc.tokenizer.pad_id)
            index = torch.tensor(batch, dtype=torch.long)
            if dev.type != "cpu":
                if cuda:
                    input_ids, mask, index = (t.pin_memory() for t in (input_ids, mask, index))
                input_ids, mask, index = (t.to(dev, non_blocking=True) for t in (input_ids, mask, index))
            hidden = enc.model(input_ids, mask)  # (B, T, H); no mask inside when every row is full
            for p in poolings:
                vec = pool(hidden, mask, p).float()  # (B, H)
                if normalize:
                    vec = F.normalize(vec, dim=-1)
                out[p].index_copy_(0, index, vec)
            done += len(batch)
            if progress is not None:
                progress(done, n)
    return out, len(batches)


def embed(
    texts: Sequence[str],
    model: Any,
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    batch_tokens: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool | Callable[[int, int], None] = False,
    return_numpy: bool = False,
    long_input: str = "truncate",
    stride: int = 128,
) -> EmbedResult:
    """Like :func:`encode`, returning ``EmbedResult(vectors, stats)``."""
    enc = _as_encoder(model, device, precision)
    mode = pooling or enc.pooling
    vectors, stats = embed_poolings(
        texts, enc, [mode], normalize=normalize, max_length=max_length,
        batch_tokens=batch_tokens, progress=progress, long_input=long_input, stride=stride,
    )
    v = vectors[mode]
    return EmbedResult(v.numpy() if return_numpy else v, stats)


def encode(texts: Sequence[str], model: Any, **options: Any):
    """Embed ``texts`` with ``model`` (a checkpoint directory or an :class:`Encoder`).

    Returns an (N, H) float32 CPU tensor (numpy array with ``return_numpy``), row i for text i.
    ``options`` are :func:`embed`'s: ``pooling`` (cls|mean|max), ``normalize`` and ``max_length``
    default to the checkpoint's sentence-transformers settings, else mean pooling, normalised, the
    model's max positions; ``batch_tokens``, ``device``, ``precision``, ``progress``, ``return_numpy``.
    Use :func:`embed` for the statistics (e.g. how many texts were truncated).
    """
    return embed(texts, model, **options).vectors


def merge_stats(parts: Sequence[EmbedStats], seconds: float | None = None) -> EmbedStats:
    """The statistics of several chunks as one (``seconds``: the whole run's, default the sum)."""
    first = parts[0]
    return EmbedStats(
        count=sum(p.count for p in parts), dim=first.dim, truncated=sum(p.truncated for p in parts),
        tokens=sum(p.tokens for p in parts), batches=sum(p.batches for p in parts),
        seconds=sum(p.seconds for p in parts) if seconds is None else seconds, pooling=first.pooling,
        normalize=first.normalize, max_length=first.max_length, device=first.device, precision=first.precision,
        windowed=sum(p.windowed for p in parts),
    )


def embed_chunks(chunks: Iterable[Sequence[str]], model: Any, poolings: Sequence[str] | None = None, *,
                 total: int | None = None, progress: Callable[[int, int | None], None] | None = None,
                 device: str = "auto", precision: str = "auto", **options: Any):
    """``(texts, {pooling: (n, H) float32 numpy array}, EmbedStats)`` for each chunk of texts, in order.

    Each chunk is one :func:`embed_poolings` call (``options``: normalize, max_length, batch_tokens), so
    texts are sorted and batched by length within it; memory depends on the chunk size, not on how many
    chunks come. ``progress(rows_done, total)`` hears about every row.
    """
    from bertcli.streaming import run_chunks

    enc = _as_encoder(model, device, precision)
    modes = list(poolings or [enc.pooling])

    def step(texts, report):
        vectors, stats = embed_poolings(texts, enc, modes, progress=lambda done, _n: report(done), **options)
        return {p: v.numpy() for p, v in vectors.items()}, stats

    for texts, (vectors, stats) in run_chunks(chunks, step, total=total, progress=progress):
        yield texts, vectors, stats


def embed_file(source: Any, model: Any, output: str, *, pooling: str | None = None, chunk_size: int | None = None,
               progress: Callable[[int, int | None], None] | None = None, metadata: dict[str, Any] | None = None,
               stream=None, device: str = "auto", precision: str = "auto", **options: Any) -> EmbedStats:
    """Embed the texts of ``source`` (a :mod:`bertcli.streaming` input: ``LinesInput``, ``ColumnInput``,
    ``ListInput``) into ``output`` (``.npy``, ``.safetensors``, ``.jsonl`` or ``-``), ``chunk_size`` texts
    at a time, rows in input order; the output is renamed into place only when complete.
    ``metadata`` (plus pooling, normalize, max_length) goes into a ``.safetensors`` file."""
    from bertcli.device import rank_world
    from bertcli.streaming import EmbeddingWriter, check_chunk_size

    size = check_chunk_size(chunk_size)
    enc = _as_encoder(model, device, precision)
    mode = check_pooling(pooling or enc.pooling)
    start = time.perf_counter()
    if rank_world()[1] > 1:
        return _embed_file_sharded(source, enc, output, mode, size, progress, metadata, stream, start, options)
    parts: list[EmbedStats] = []
    writer: EmbeddingWriter | None = None
    try:
        for texts, vectors, stats in embed_chunks(source.chunks(size), enc, [mode], total=source.total,
                                                  progress=progress, **options):
            if writer is None:
                meta = {**(metadata or {}), "pooling": stats.pooling, "normalize": stats.normalize,
                        "max_length": stats.max_length}
                writer = EmbeddingWriter(output, stats.dim, total=source.total, metadata=meta, stream=stream)
            writer.write(vectors[mode], texts)
            parts.append(stats)
        if writer is None:
            raise DataError(f"{source.name}: no texts to embed")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return merge_stats(parts, time.perf_counter() - start)


def _embed_file_sharded(source, enc: Encoder, output: str, mode: str, size: int, progress, metadata, stream,
                        start: float, options: dict[str, Any]) -> EmbedStats:
    """:func:`embed_file` under ``torchrun``: rank r embeds chunks r, r + W, ... into part files beside the output
    (a shared filesystem across nodes); after a barrier rank 0 writes them, with the texts, in input order into
    ``output``, the same file one process writes, and removes the parts. The statistics add up every rank's."""
    import dataclasses
    import shutil

    import numpy as np
    import torch
    import torch.distributed as dist

    from bertcli.device import barrier, rank_world
    from bertcli.streaming import EmbeddingWriter

    rank, world = rank_world()
    base = Path(output).parent if output != "-" else Path(".")
    parts_dir = base / f".{Path(output).name if output != '-' else 'stdout'}.embed-parts"
    parts_dir.mkdir(exist_ok=True)
    mine = ((i, texts) for i, texts in enumerate(source.chunks(size)) if i % world == rank)
    order: list[int] = []

    def chunks():
        for i, texts in mine:
            order.append(i)
            yield texts

    parts: list[EmbedStats] = []
    for _texts, vectors, stats in embed_chunks(chunks(), enc, [mode], progress=progress, **options):
        with EmbeddingWriter(str(parts_dir / f"{order[len(parts)]:07d}.npy"), stats.dim) as writer:
            writer.write(vectors[mode])
        parts.append(stats)
    local = merge_stats(parts) if parts else None
    totals = torch.tensor([local.count, local.tokens, local.truncated, local.batches] if local else [0] * 4,
                          dtype=torch.long)
    dist.all_reduce(totals)
    barrier()
    try:
        if rank == 0:
            if local is None:
                raise DataError(f"{source.name}: no texts to embed")
            meta = {**(metadata or {}), "pooling": local.pooling, "normalize": local.normalize,
                    "max_length": local.max_length}
            with EmbeddingWriter(output, local.dim, total=source.total, metadata=meta, stream=stream) as writer:
                for i, texts in enumerate(source.chunks(size)):
                    writer.write(np.load(parts_dir / f"{i:07d}.npy", allow_pickle=False), texts)
    finally:
        barrier()
        if rank == 0:
            shutil.rmtree(parts_dir, ignore_errors=True)
    count, tokens, truncated, batches = totals.tolist()
    if local is None:
        return EmbedStats(count=count, dim=enc.dim, truncated=truncated, tokens=tokens, batches=batches,
                          seconds=time.perf_counter() - start, pooling=mode, normalize=enc.normalize,
                          max_length=enc.max_length, device=str(enc.device), precision=enc.precision)
    return dataclasses.replace(local, count=count, tokens=tokens, truncated=truncated, batches=batches,
                               seconds=time.perf_counter() - start)


# ============================================================ similarity
def similarity(a, b, *, pairwise: bool = False, model: Any = None, **encode_kwargs):
    """Cosine similarity.

    * two vectors (H,) -> a float;
    * (N, H) and (M, H) -> the (N, M) matrix; with ``pairwise=True`` and N == M -> (N,) row by row.
    * strings or lists of strings are encoded first with ``model`` (and ``encode_kwargs``).

    Tensors in, tensor out; numpy in, numpy out.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    def vectors(x):
        if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], str)):
            if model is None:
                raise TypeError("similarity() of texts needs model=")
            single = isinstance(x, str)
            v = encode([x] if single else list(x), model, **encode_kwargs)
            return (v[0] if single else v), False
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.asarray(x, dtype=np.float32)), True
        return torch.as_tensor(x).float(), False

    va, a_np = vectors(a)
    vb, b_np = vectors(b)
    if va.dim() == 1 and vb.dim() == 1:
        return float(F.cosine_similarity(va, vb, dim=0, eps=1e-12))
    va2, vb2 = (va[None] if va.dim() == 1 else va), (vb[None] if vb.dim() == 1 else vb)
    if va2.shape[-1] != vb2.shape[-1]:
        raise ValueError(f"vectors differ in dimension: {va2.shape[-1]} and {vb2.shape[-1]}")
    na, nb = F.normalize(va2, dim=-1, eps=1e-12), F.normalize(vb2, dim=-1, eps=1e-12)
    if pairwise:
        if na.shape[0] != nb.shape[0]:
            raise ValueError(f"pairwise similarity needs as many rows in a as in b ({na.shape[0]} vs {nb.shape[0]})")
        out = (na * nb).sum(-1)
    else:
        out = na @ nb.T
    return out.numpy() if (a_np or b_np) else out


@dataclass
class PairScores:
    scores: dict[str, Any]  # pooling -> (N,) float numpy array of cosine similarities
    stats: EmbedStats
    correlations: dict[str, dict[str, float]] | None = None  # pooling -> {"pearson", "spearman"}


def score_pairs(
    a_texts: Sequence[str],
    b_texts: Sequence[str],
    model: Any,
    *,
    poolings: Sequence[str] | None = None,
    gold: Sequence[float] | None = None,
    **kwargs,
) -> PairScores:
    """Cosine similarity of each (a, b) pair; every distinct text is encoded once, pooled each way.

    With ``gold`` scores, Pearson and Spearman correlations (scipy) per pooling.
    """
    if len(a_texts) != len(b_texts):
        raise ValueError("a_texts and b_texts differ in length")
    enc = _as_encoder(model, kwargs.pop("device", "auto"), kwargs.pop("precision", "auto"))
    unique = list(dict.fromkeys([*a_texts, *b_texts]))
    where = {t: i for i, t in enumerate(unique)}
    vectors, stats = embed_poolings(unique, enc, list(poolings or [enc.pooling]), **kwargs)
    ia = [where[t] for t in a_texts]
    ib = [where[t] for t in b_texts]
    scores = {p: similarity(v[ia], v[ib], pairwise=True).numpy() for p, v in vectors.items()}
    corr = None
    if gold is not None:
        corr = {p: correlations(s, gold) for p, s in scores.items()}
    return PairScores(scores, stats, corr)


def score_pair_chunks(chunks: Iterable[tuple[Sequence[str], Sequence[str]]], model: Any, *,
                      poolings: Sequence[str] | None = None, total: int | None = None,
                      progress: Callable[[int, int | None], None] | None = None, **kwargs):
    """:func:`score_pairs` one chunk of ``(a_texts, b_texts)`` at a time: yields ``PairScores`` per chunk, in
    order (no correlations: gather the chunks' scores and call :func:`correlations` on them, which needs
    only the scores, never the vectors). ``progress(pairs_done, total)``."""
    from bertcli.streaming import run_chunks

    enc = _as_encoder(model, kwargs.pop("device", "auto"), kwargs.pop("precision", "auto"))

    def step(pair, report):
        a, b = pair
        n = len(a)
        return score_pairs(a, b, enc, poolings=poolings,
                           progress=lambda done, texts: report(n * done // max(texts, 1)), **kwargs)

    for _, scores in run_chunks(chunks, step, total=total, progress=progress, size=lambda pair: len(pair[0])):
        yield scores


def correlations(scores, gold) -> dict[str, float]:
    """Pearson and Spearman correlation (scipy.stats) between predicted and gold scores."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    if len(s) < 2:
        raise DataError("correlations need at least 2 pairs")
    if np.all(g == g[0]):
        raise DataError("every gold score is the same; correlations are undefined")
    return {"pearson": float(pearsonr(s, g)[0]), "spearman": float(spearmanr(s, g)[0])}


# ============================================================ output files
def check_output(path: str) -> str:
    """The output kind ('npy', 'safetensors', 'jsonl' or '-') for ``path``; unknown extensions are an error."""
    if path == "-":
        return "-"
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise DataError(
            f"{path}: unknown output format '{suffix or '(no extension)'}'; use .npy, .safetensors, .jsonl, "
            f"or - for JSON lines on stdout"
        )
    parent = Path(path).parent
    if not parent.is_dir():
        raise DataError(f"{path}: the directory {parent} does not exist")
    return suffix[1:]


def write_embeddings(path: str, vectors, texts: Sequence[str] | None = None,
                     metadata: dict[str, Any] | None = None, stream=None) -> None:
    """Write (N, H) vectors to ``.npy`` (no pickle), ``.safetensors`` (tensor ``embeddings``),
    ``.jsonl`` or ``-`` (JSON lines ``{"index", "text", "embedding"}`` on ``stream``/stdout).

    Files are written to a temporary name and renamed into place.
    """
    import numpy as np

    from bertcli.streaming import EmbeddingWriter

    array = vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors, dtype=np.float32)
    array = np.ascontiguousarray(array, dtype=np.float32)
    with EmbeddingWriter(path, array.shape[1] if array.ndim == 2 else 0, total=len(array), metadata=metadata,
                         stream=stream) as writer:
        writer.write(array, texts)
