"""Fuzzing (issue 20): any input to a reader, config loader, the safetensors header check or the
tokenizer gives a result or a ``BertcliError``, never another exception.

Profiles (``HYPOTHESIS_PROFILE``, registered in conftest.py): ``ci`` (default: few examples,
derandomised, so CI is bounded and repeatable) and ``dev`` (many more, random). Cases the fuzzer
found are kept below as explicit regression tests (``test_found_*``).
"""

from __future__ import annotations

import json
import struct
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertcli.errors import BertcliError

pytestmark = pytest.mark.fuzz

WORK = Path(tempfile.mkdtemp(prefix="bertcli-fuzz-"))
_counter = iter(range(10**9))


def put(data: bytes | str, suffix: str) -> Path:
    """A fresh file holding ``data`` (hypothesis and function-scoped tmp_path do not mix)."""
    path = WORK / f"f{next(_counter)}{suffix}"
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


MAX_PEAK = 32 * 2**20  # inputs are at most a few KB: a larger peak is out of proportion


def result_or_error(fn, *args, **kwargs):
    """Call ``fn``: its result, or None after a BertcliError; any other exception fails the test,
    and so does a peak of Python allocations above ``MAX_PEAK``."""
    tracemalloc.start()
    try:
        return fn(*args, **kwargs)
    except BertcliError as exc:
        assert str(exc).strip(), "an error message must not be empty"
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MAX_PEAK, f"{fn.__name__} allocated {peak} bytes at its peak"


# ------------------------------------------------------------ strategies
HUGE = "9" * 4301  # an integer over Python's 4300-digit conversion limit (json.dumps cannot write one)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
TABLE_CHARS = st.sampled_from(list(',\t"\n\r \\{}[]:abc12\ufeff\x00é') + ["null", "label", "text", HUGE])
table_text = st.lists(TABLE_CHARS, max_size=80).map("".join)
any_text = st.text(max_size=200)  # any code point, lone surrogates included
# JSON and YAML texts with such an integer
huge_number_text = st.sampled_from(['{"data": %s}', "[%s]", '{"text": "a", "label": %s}', '{"hidden_size": %s}',
                                    '{"w": {"dtype": "F32", "shape": [%s], "data_offsets": [0, 4]}}',
                                    "epochs: %s", "model:\n  hidden_size: %s"]).map(lambda t: t % HUGE)


# ------------------------------------------------------------ tables (CSV, TSV, JSONL)
@given(data=st.binary(max_size=300) | table_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
       suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".txt"]), quoting=st.booleans(), header=st.booleans(),
       delimiter=st.none() | st.sampled_from(["tab", ",", ";", "ab", '"', "\n", " "]) | st.text(max_size=3),
       encoding=st.sampled_from(["utf-8", "auto", "latin-1", "utf-16", "base64", "nope"]))
def test_tables_any_bytes(data, suffix, quoting, header, delimiter, encoding):
    from bertcli.data.tables import read_table

    table = result_or_error(read_table, put(data, suffix), quoting=quoting, header=header, delimiter=delimiter,
                            encoding=encoding)
    if table is None:
        return
    assert len(table.rows) == len(table.lines)
    for name in [*table.columns[:3], "text", "0"]:
        result_or_error(table.column, name)
        result_or_error(table.labels, name)
    table.records()


@given(records=st.lists(st.dictionaries(st.sampled_from(["text", "label", "pair"]), json_values, max_size=3)
                        | json_values, max_size=6))
def test_jsonl_any_values(records):
    from bertcli.data.tables import read_table

    text = "\n".join(json.dumps(r) for r in records)
    table = result_or_error(read_table, put(text, ".jsonl"))
    if table is None:
        return
    for name in ("text", "label"):
        values = result_or_error(table.column, name)
        assert values is None or all(isinstance(v, str) for v in values)
        labels = result_or_error(table.labels, name)
        assert labels is None or all(isinstance(v, str) and v for v in labels)


# ------------------------------------------------------------ CoNLL
CONLL_CHARS = st.sampled_from(["\t", " ", "\n", "\r", "B-PER", "I-PER", "O", "X-", "word", "-DOCSTART-", "é", "B-"])


@given(data=st.binary(max_size=200) | st.lists(CONLL_CHARS, max_size=40).map("".join).map(str.encode))
def test_conll_any_bytes(data):
    from bertcli.data.conll import read_conll

    f = result_or_error(read_conll, str(put(data, ".conll")))
    if f is not None:
        assert all(len(s.words) == len(s.tags) > 0 for s in f.sentences)


# ------------------------------------------------------------ SQuAD JSON
def squad_like():
    answer = st.fixed_dictionaries({"text": json_values | st.text(max_size=5),
                                    "answer_start": json_values | st.integers(-3, 30)})
    qa = st.fixed_dictionaries({"id": json_values, "question": json_values | st.text(max_size=10)},
                               optional={"answers": st.lists(answer, max_size=2) | json_values,
                                         "is_impossible": json_values})
    para = st.fixed_dictionaries({"context": st.text(max_size=30) | json_values,
                                  "qas": st.lists(qa, max_size=2) | json_values})
    article = st.fixed_dictionaries({"paragraphs": st.lists(para, max_size=2) | json_values},
                                    optional={"title": json_values})
    return st.fixed_dictionaries({"data": st.lists(article, max_size=2) | json_values},
                                 optional={"version": json_values})


@given(obj=squad_like() | json_values, labelled=st.booleans())
def test_squad_any_json(obj, labelled):
    from bertcli.data.squad import parse_squad, read_squad

    result_or_error(parse_squad, obj, "fuzz.json", labelled=labelled)
    result_or_error(read_squad, str(put(json.dumps(obj), ".json")), labelled=labelled)


@given(data=st.binary(max_size=200) | huge_number_text.map(str.encode))
def test_squad_any_bytes(data):
    from bertcli.data.squad import read_squad

    result_or_error(read_squad, str(put(data, ".json")))


# ------------------------------------------------------------ corpus text
@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from bertcli.tokenizer import Tokenizer

    return Tokenizer.load(minilm_dir)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300) | any_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
       documents=st.sampled_from(["blank-line", "file"]), encoding=st.sampled_from(["utf-8", "auto", "latin-1"]),
       errors=st.sampled_from(["strict", "replace"]))
def test_corpus_any_bytes(tokenizer, data, documents, encoding, errors):
    from bertcli.data.corpus import load_corpus

    corpus = result_or_error(load_corpus, [put(data, ".txt")], tokenizer, WORK / f"cache{next(_counter)}",
                             documents=documents, encoding=encoding, errors=errors)
    if corpus is not None:
        assert corpus.num_tokens > 0 and corpus.num_docs > 0


# ------------------------------------------------------------ config loaders
YAML_CHARS = st.sampled_from(list(":-\n \t[]{}'\"!&*#|>?,%@`") + ["!!python/object:os.system", "a", "1e-5", "null",
                                                                  "model", "lr", "epochs", "~", "é", "\x00"])


@given(text=st.lists(YAML_CHARS, max_size=40).map("".join) | any_text | huge_number_text)
def test_yaml_loaders_any_text(text):
    from bertcli.config import load_yaml
    from bertcli.tasks.classification import options_from_yaml
    from bertcli.tasks.pretraining import PretrainConfig

    path = put(text, ".yaml")
    result_or_error(load_yaml, path)
    result_or_error(options_from_yaml, str(path))
    result_or_error(PretrainConfig.from_yaml, path)


CONFIG_KEYS = ["hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions", "vocab_size",
               "activation", "dropout", "preset", "pad_token_id", "layer_norm_eps", "type_vocab_size",
               "hidden_act", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
               "model_type", "position_embedding_type", "hidden_dropout_prob", "initializer_range", "unknown"]
config_value = (json_values | st.integers(-5, 2**70) | st.sampled_from(["gelu", "relu", "tiny", "bert", "absolute"])
                | st.floats())


@given(obj=st.dictionaries(st.sampled_from(CONFIG_KEYS), config_value, max_size=8) | json_values)
def test_config_dicts(obj):
    from bertcli.config import BertConfig

    result_or_error(BertConfig.from_dict, obj, "fuzz")
    if isinstance(obj, dict):
        result_or_error(BertConfig.from_hf, obj, "config.json")


@given(data=st.binary(max_size=200) | st.dictionaries(st.sampled_from(CONFIG_KEYS), config_value, max_size=8)
       .map(lambda d: json.dumps(d).encode()) | huge_number_text.map(str.encode))
def test_checkpoint_config_json(data):
    """config.json of a checkpoint directory, read the way every command reads it."""
    from bertcli.checkpoint import load_checkpoint
    from bertcli.config import read_json

    d = WORK / f"ckpt{next(_counter)}"
    d.mkdir()
    (d / "config.json").write_bytes(data)
    result_or_error(read_json, d / "config.json")
    result_or_error(load_checkpoint, d, weights=False)


# ------------------------------------------------------------ safetensors header
DTYPES = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "XX", 3, None])
tensor_entry = st.fixed_dictionaries({"dtype": DTYPES | json_values,
                                      "shape": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
                                      "data_offsets": st.lists(st.integers(-5, 2**63), min_size=0, max_size=3)
                                      | json_values})


@given(header=st.dictionaries(st.text(max_size=6), tensor_entry, max_size=3) | json_values,
       pad=st.binary(max_size=64), length_delta=st.integers(-4, 4))
def test_safetensors_header_structured(header, pad, length_delta):
    from bertcli.checkpoint import read_safetensors_header

    raw = json.dumps(header).encode()
    n = max(0, len(raw) + length_delta)
    result_or_error(read_safetensors_header, put(struct.pack("<Q", n) + raw + pad, ".safetensors"))


@given(data=st.binary(max_size=120) | huge_number_text.map(str.encode), n=st.integers(0, 2**64 - 1)
       | st.integers(0, 200))
def test_safetensors_header_any_bytes(data, n):
    from bertcli.checkpoint import read_safetensors_header

    result_or_error(read_safetensors_header, put(struct.pack("<Q", len(data)) + data, ".safetensors"))
    result_or_error(read_safetensors_header, put(data, ".safetensors"))
    result_or_error(read_safetensors_header, put(struct.pack("<Q", n) + data, ".safetensors"))


# ------------------------------------------------------------ tokenizer entry points
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=any_text, pair=st.none() | any_text, max_length=st.integers(-2, 600))
def test_tokenizer_encode_any_text(tokenizer, text, pair, max_length):
    enc = result_or_error(tokenizer.encode, text, pair, max_length=max_length)
    if enc is not None:
        assert 3 <= max_length and len(enc.ids) <= max_length and enc.ids[0] == tokenizer.token_to_id("[CLS]")
        ids, _, _ = tokenizer.encode_ids([text], None if pair is None else [pair], max_length=max_length)
        assert len(ids[0]) <= max_length


tok_files = st.dictionaries(st.sampled_from(["tokenizer.json", "vocab.txt", "tokenizer_config.json"]),
                            st.binary(max_size=80) | json_values.map(lambda v: json.dumps(v).encode())
                            | huge_number_text.map(str.encode)
                            | st.lists(st.sampled_from(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##b", ""]),
                                       max_size=8).map(lambda xs: "\n".join(xs).encode()), max_size=3)


@given(files=tok_files)
def test_tokenizer_load_any_files(files):
    from bertcli.tokenizer import Tokenizer

    d = WORK / f"tok{next(_counter)}"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    tok = result_or_error(Tokenizer.load, d)
    if tok is not None:
        assert tok.vocab_size > 0


# ------------------------------------------------------------ cases the fuzzer found
def test_found_jsonl_integer_of_5000_digits():
    from bertcli.data.tables import read_table

    with pytest.raises(BertcliError, match="line 1: invalid JSON"):
        read_table(put('{"text": ' + "9" * 5000 + "}", ".jsonl"))


def test_found_integer_of_5000_digits_in_every_json_and_yaml_reader():
    """json.loads / yaml raise a bare ValueError for an integer over 4300 digits."""
    from bertcli.checkpoint import read_safetensors_header
    from bertcli.config import load_yaml, read_json
    from bertcli.data.squad import read_squad

    big = "9" * 5000
    with pytest.raises(BertcliError, match="invalid JSON"):
        read_squad(str(put('{"data": ' + big + "}", ".json")))
    with pytest.raises(BertcliError, match="invalid JSON"):
        read_json(put('{"hidden_size": ' + big + "}", ".json"))
    with pytest.raises(BertcliError, match="invalid YAML"):
        load_yaml(put("epochs: " + big + "\n", ".yaml"))
    from bertcli.tokenizer import Tokenizer

    tok_dir = WORK / f"tok{next(_counter)}"
    tok_dir.mkdir()
    (tok_dir / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n")
    (tok_dir / "tokenizer_config.json").write_text('{"model_max_length": ' + big + "}")
    with pytest.raises(BertcliError, match="tokenizer_config.json: invalid JSON"):
        Tokenizer.load(tok_dir)
    raw = ('{"w": {"dtype": "F32", "shape": [' + big + '], "data_offsets": [0, 4]}}').encode()
    with pytest.raises(BertcliError, match="corrupt safetensors header"):
        read_safetensors_header(put(struct.pack("<Q", len(raw)) + raw + b"\0" * 4, ".safetensors"))


@pytest.mark.parametrize("dtype", [[], {}, ["F32"]])
def test_found_safetensors_dtype_that_is_not_a_string(dtype):
    """An unhashable dtype (a list or object) raised TypeError in the dtype lookup."""
    from bertcli.checkpoint import read_safetensors_header

    raw = json.dumps({"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}).encode()
    with pytest.raises(BertcliError, match="tensor 'w': unknown dtype"):
        read_safetensors_header(put(struct.pack("<Q", len(raw)) + raw + b"\0" * 4, ".safetensors"))


@pytest.mark.parametrize("act", [[], {"a": 1}])
def test_found_config_hidden_act_that_is_not_a_string(act):
    """hidden_act given as a list or object raised TypeError in the activation name lookup."""
    from bertcli.config import BertConfig

    with pytest.raises(BertcliError, match="hidden_act"):
        BertConfig.from_hf({"hidden_size": 32, "hidden_act": act})
    with pytest.raises(BertcliError):
        BertConfig.from_dict({"hidden_size": 32, "hidden_act": act})


@pytest.mark.parametrize("model_type", [[], {"a": 1}, 3, None])
def test_found_config_model_type_that_is_not_a_string(model_type):
    """model_type given as a list or object raised TypeError in the family lookup."""
    from bertcli.config import BertConfig

    with pytest.raises(BertcliError, match="model_type"):
        BertConfig.from_hf({"hidden_size": 32, "model_type": model_type})


@pytest.mark.parametrize("delimiter", ["ab", "\n", "\r", "tabs"])
def test_found_delimiter_of_several_characters(delimiter):
    """--delimiter ab reached csv.reader, which raised TypeError."""
    from bertcli.data.tables import read_table

    with pytest.raises(BertcliError, match="--delimiter .*: give one character"):
        read_table(put("a,b\n1,2\n", ".csv"), delimiter=delimiter)
