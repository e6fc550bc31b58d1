"""Hardening (issue 8), cases 5-7: checkpoint files from a hostile or broken source.

5. No pickle: planted ``*.bin`` / ``*.pth`` / ``*.pkl`` files whose unpickling would create a marker
   file are refused (or ignored next to safetensors) and never run; with every unpickling entry
   point patched to raise, the commands that read checkpoints still work.
6. Malformed safetensors: each hostile header is refused with a CheckpointError, quickly and
   without large allocations (tracemalloc peak, never a wall-clock time).
7. Property tests (hypothesis): write then read of random dtypes and shapes is bitwise identical;
   random byte mutations of a valid checkpoint give a BertcliError or a load, never another
   exception.
"""

from __future__ import annotations

import json
import pickle
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch
from conftest import one_error_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertcli.checkpoint import (
    WEIGHTS_NAME,
    load_checkpoint,
    load_encoder,
    read_safetensors_header,
    read_weights,
    save_checkpoint,
    write_weights,
)
from bertcli.config import BertConfig
from bertcli.errors import BertcliError, CheckpointError

TINY = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=32)


class Evil:
    """Unpickling this creates ``marker`` (a stand-in for running arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Every unpickling entry point raises: any use of pickle fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    class Refusing:
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(pickle, "Unpickler", Refusing)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    return refuse


@pytest.fixture
def small_ckpt(tmp_path):
    cfg = BertConfig(vocab_size=40, **TINY)
    torch.manual_seed(0)
    from bertcli.heads import BertForPreTraining

    return save_checkpoint(tmp_path / "ckpt", BertForPreTraining(cfg).state_dict(), cfg, task="pretraining")


# ============================================================ 5. no pickle
@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pth", "weights.pkl"])
def test_planted_pickle_without_safetensors_is_refused_and_never_runs(tmp_path, cli, name, no_unpickling):
    marker = tmp_path / "PWNED"
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(BertConfig(vocab_size=40, **TINY).to_hf()))
    (d / name).write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(CheckpointError, match=rf"{name}.*never loads pickle"):
        load_checkpoint(d)
    one_error_line(cli("info", "--model", d), name, "pickle")
    assert not marker.exists()


def test_planted_pickles_next_to_safetensors_are_ignored(small_ckpt, tmp_path, cli, no_unpickling):
    marker = tmp_path / "PWNED"
    for name in ("pytorch_model.bin", "optimizer.pt", "rng_state.pth", "training_args.pkl"):
        (small_ckpt / name).write_bytes(pickle.dumps(Evil(marker)))
    ckpt = load_checkpoint(small_ckpt)
    assert "bert.embeddings.word.weight" in ckpt.state
    assert cli("info", "--model", small_ckpt).exit_code == 0
    assert not marker.exists()


# ============================================================ 6. malformed safetensors
def _header_file(path: Path, header: dict | bytes, data: bytes = b"", claimed: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if claimed is None else claimed) + raw + data)
    return path


def _u8(offsets, shape=None):
    return {"dtype": "U8", "shape": shape if shape is not None else [offsets[1] - offsets[0]],
            "data_offsets": list(offsets)}


def _many(n: int, escaped: bool = False) -> Path:
    key = "data\\u005foffsets" if escaped else "data_offsets"
    body = ",".join(f'"t{i}":{{"dtype":"U8","shape":[1],"{key}":[{i},{i + 1}]}}' for i in range(n))
    return ("{" + body + "}").encode(), b"\0" * n


HOSTILE = {
    "2^63 header length on a 1 KB file": (lambda p: p.write_bytes(struct.pack("<Q", 2**63) + b"{" * 1016),
                                          "claims 9223372036854775808 bytes"),
    "max u64 header length": (lambda p: p.write_bytes(b"\xff" * 8 + b"{}"), "claims"),
    "truncated header": (lambda p: _header_file(p, {"a": _u8((0, 4))}, claimed=400), "claims 400 bytes"),
    "file shorter than the length field": (lambda p: p.write_bytes(b"\x05\0\0"), "truncated"),
    "header not starting with {": (lambda p: _header_file(p, b'["a", 1]'), "does not start with '{'"),
    "invalid UTF-8 in the header": (lambda p: _header_file(p, b'{"\xff\xfe": 1}'), "invalid UTF-8 at byte 10"),
    "duplicate names": (lambda p: _header_file(
        p, b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
           b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', b"\0\0"), "'a' appears twice"),
    "overlapping offsets": (lambda p: _header_file(p, {"a": _u8((0, 4)), "b": _u8((2, 6))}, b"\0" * 6),
                            "overlaps"),
    "shape product overflows": (lambda p: _header_file(
        p, {"a": {"dtype": "F64", "shape": [2**39] * 4, "data_offsets": [0, 8]}}, b"\0" * 8), "needs"),
    "shape product wraps to zero in 64 bits": (lambda p: _header_file(
        p, {"a": {"dtype": "U8", "shape": [2**32, 2**32, 0], "data_offsets": [0, 0]},
            "b": {"dtype": "U8", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}), "needs"),
    "negative dimension": (lambda p: _header_file(
        p, {"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}), "invalid shape"),
    "offsets beyond the file": (lambda p: _header_file(p, {"a": _u8((0, 2**36), [2**36])}), "outside"),
    "trailing bytes": (lambda p: _header_file(p, {"a": _u8((0, 4))}, b"\0" * 5), "1 trailing bytes"),
    "a gap between tensors": (lambda p: _header_file(p, {"a": _u8((0, 2)), "b": _u8((3, 4))}, b"\0" * 4),
                              "gap"),
    "100k entries": (lambda p: _header_file(p, *_many(100_000)), "more than 10000 tensors"),
    "100k entries with escaped keys": (lambda p: _header_file(p, *_many(100_000, escaped=True)),
                                       "more than 10000 tensors"),
    "not JSON": (lambda p: _header_file(p, b"{not json}"), "invalid JSON"),
    "a JSON list entry": (lambda p: _header_file(p, {"a": [1, 2]}), "malformed header entry"),
    "bool shape": (lambda p: _header_file(
        p, {"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\0"), "invalid shape"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_malformed_safetensors_refused_without_large_allocations(tmp_path, case):
    make, pattern = HOSTILE[case]
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(BertConfig(vocab_size=40, **TINY).to_hf()))
    f = d / WEIGHTS_NAME
    make(f)
    size = f.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_checkpoint(d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(f) in str(info.value)
    # never more than a few copies of the file itself: the claimed sizes are never allocated
    assert peak < 3 * size + 1_000_000, (case, peak, size)


def test_malformed_weights_through_the_cli(tmp_path, cli, small_ckpt):
    _header_file(small_ckpt / WEIGHTS_NAME, {"a": _u8((0, 4)), "b": _u8((2, 6))}, b"\0" * 6)
    one_error_line(cli("fill-mask", "--model", small_ckpt, "a [MASK] b"), WEIGHTS_NAME, "overlaps")


def test_safetensors_error_on_load_is_a_checkpoint_error(tmp_path):
    # a header that passes our checks but that safetensors itself rejects (metadata must map to strings)
    f = _header_file(tmp_path / WEIGHTS_NAME, {"__metadata__": {"a": [1]}, "w": _u8((0, 1))}, b"\0")
    read_safetensors_header(f)
    with pytest.raises(CheckpointError, match="cannot load weights"):
        read_weights(f)


# ============================================================ 7. property tests
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        DTYPES.append(getattr(torch, _name))


def _random_tensor(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    n = 1
    for d in shape:
        n *= d
    raw = torch.randint(0, 256, (n * torch.empty((), dtype=dtype).element_size(),), dtype=torch.uint8,
                        generator=g)
    return raw.view(dtype).reshape(shape)  # every bit pattern, NaNs and infinities included


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


tensor_specs = st.lists(
    st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), min_size=0, max_size=4),
              st.integers(0, 2**31)),
    min_size=1, max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=tensor_specs)
def test_write_then_read_is_bitwise_identical(tmp_path, specs):
    tensors = {f"t{i}": _random_tensor(dtype, shape, seed) for i, (dtype, shape, seed) in enumerate(specs)}
    f = tmp_path / "w.safetensors"
    write_weights(tensors, f)
    back = read_weights(f)
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape, k
        assert _bits(back[k]) == _bits(t), k


FILES = ["config.json", WEIGHTS_NAME, "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A valid checkpoint's files, as bytes."""
    from test_hardening_training import write_vocab

    from bertcli.heads import BertForSequenceClassification
    from bertcli.tokenizer import Tokenizer

    d = tmp_path_factory.mktemp("pristine")
    tok = Tokenizer.load(write_vocab(d / "vocab"))
    cfg = BertConfig(vocab_size=tok.vocab_size, **TINY)
    torch.manual_seed(0)
    path = save_checkpoint(d / "ckpt", BertForSequenceClassification(cfg, 3).state_dict(), cfg, tok,
                           task="classification",
                           hf_extra={"id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2}})
    return {name: (path / name).read_bytes() for name in FILES}


mutations = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), changes=mutations,
       cut=st.one_of(st.none(), st.floats(0, 1)), header_only=st.booleans())
def test_mutated_checkpoint_gives_only_checkpoint_errors(tmp_path, pristine, name, changes, cut, header_only):
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    for n, data in pristine.items():
        (d / n).write_bytes(data)
    data = bytearray(pristine[name])
    # weights: aim most mutations at the header, where the structure is
    span = 8 + struct.unpack("<Q", data[:8])[0] if name == WEIGHTS_NAME and header_only else len(data)
    for where, value in changes:
        data[int(where * span)] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    (d / name).write_bytes(bytes(data))
    try:
        _, _, ckpt = load_encoder(d)  # config, weights and tokenizer
    except BertcliError:
        return
    # it loaded: the result is usable as a checkpoint
    assert ckpt.config.vocab_size > 0 and isinstance(ckpt.state, dict)


def test_train_resume_and_inference_never_unpickle(tmp_path, cli, monkeypatch, no_unpickling):
    """Fine-tune, interrupt, resume, predict, fill-mask, embed: all without a single unpickling."""
    import signal

    from test_hardening_training import make_small_model, sentiment_csv

    from bertcli.cli.app import app
    from bertcli.tasks.classification import SequenceClassificationTask

    torch.set_num_threads(1)
    model = make_small_model(tmp_path)
    train = sentiment_csv(tmp_path / "train.csv")
    args = ["finetune", "--model", model, "--train", train, "--text-column", "text", "--label-column", "label",
            "--out", tmp_path / "run", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--quiet"]
    original = SequenceClassificationTask.compute_loss
    calls = {"n": 0}

    def interrupting(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            signal.raise_signal(signal.SIGINT)
        return original(self, *a, **kw)

    monkeypatch.setattr(SequenceClassificationTask, "compute_loss", interrupting)
    assert cli(*args).exit_code == 130
    monkeypatch.setattr(SequenceClassificationTask, "compute_loss", original)
    marker = tmp_path / "PWNED"
    step4 = tmp_path / "run" / "checkpoints" / "step-4"
    for planted in (step4 / "trainer_state" / "optimizer.pt", step4 / "trainer_state" / "rng_state.pth",
                    step4 / "pytorch_model.bin", step4 / "training_args.pkl"):
        planted.write_bytes(pickle.dumps(Evil(marker)))
    result = cli(*args, "--resume", "auto", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["resumed_from"].endswith("step-4")
    result = cli("predict", "--model", tmp_path / "run", train, "--json", "--quiet")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 24, result.output
    result = cli("fill-mask", "--model", model, "--json", "a [MASK] film")
    assert result.exit_code == 0, result.output
    commands = {c.name for c in app.registered_commands}
    if "embed" in commands:
        result = cli("embed", "--model", model, "--json", "a lovely film")
        assert result.exit_code == 0, result.output
    assert not marker.exists()
