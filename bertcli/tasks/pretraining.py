"""The pretraining task (MLM + NSP, MLM + SOP, or MLM alone) for any family, and ``pretrain()``.

Options come in groups (``DataOptions``, ``MaskingOptions``, ``TrainArgs``) that a YAML file
(``model:``, ``data:``, ``masking:``, ``train:``) and CLI flags fill; flags win.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertcli.config import BertConfig, check_options, load_yaml, merge_options, options_from_dict
from bertcli.data.corpus import DOCUMENT_MODES, OBJECTIVES, PAIR_OBJECTIVES
from bertcli.errors import ConfigError, TokenizerError
from bertcli.train import Task, TrainArgs

YAML_SECTIONS = ("model", "data", "masking", "train", "electra")
# what each family pretrains with by default (BERT: NSP, ALBERT: sentence order, the rest: MLM alone)
DEFAULT_OBJECTIVES = {"bert": "mlm+nsp", "albert": "mlm+sop"}
PAIR_FAMILIES = ("bert", "albert")  # the families with a sentence-pair head in *ForPreTraining
# the share of tokens masked by default (ModernBERT's recipe masks 30%; BERT's 15%)
DEFAULT_MASK_PROBS = {"modernbert": 0.3}


@dataclass
class DataOptions:
    objective: str | None = None       # mlm+nsp | mlm+sop | mlm | electra; None = the family's (DEFAULT_OBJECTIVES)
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    eval_fraction: float = 0.02        # share of documents held out for evaluation
    max_eval_examples: int = 2000
    documents: str = "blank-line"      # blank-line | file
    encoding: str = "utf-8"
    encoding_errors: str = "strict"
    cache_dir: str | None = None       # default: OUT/cache

    def __post_init__(self) -> None:
        check_options(self)
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ConfigError(f"data option 'objective' is '{self.objective}'; valid: {', '.join(OBJECTIVES)}")
        if self.documents not in DOCUMENT_MODES:
            raise ConfigError(f"data option 'documents' is '{self.documents}'; valid: {', '.join(DOCUMENT_MODES)}")
        if self.max_seq_length < 8:
            raise ConfigError(f"data option 'max_seq_length' must be at least 8, got {self.max_seq_length}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ConfigError(f"data option 'short_seq_prob' must be in [0, 1], got {self.short_seq_prob}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data option 'eval_fraction' must be in [0, 1), got {self.eval_fraction}")
        if self.max_eval_examples < 1:
            raise ConfigError(f"data option 'max_eval_examples' must be at least 1, got {self.max_eval_examples}")


@dataclass
class MaskingOptions:
    mask_prob: float | None = None  # None = the family's (DEFAULT_MASK_PROBS, else 0.15)
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word: bool = False

    def __post_init__(self) -> None:
        from bertcli.masking import check_probabilities

        check_options(self)
        check_probabilities(0.15 if self.mask_prob is None else self.mask_prob, self.mask_replace_prob, self.random_replace_prob)


@dataclass
class ElectraOptions:
    """``--objective electra`` (bertcli/tasks/electra.py)."""

    generator_size: float = 0.25   # generator width / discriminator width (hidden, heads, intermediate)
    rtd_weight: float = 50.0       # weight of the discriminator's loss (Clark et al. 2020)
    temperature: float = 1.0       # sampling temperature of the replacements (as google-research/electra)

    def __post_init__(self) -> None:
        check_options(self)
        if not 0.0 < self.generator_size <= 1.0:
            raise ConfigError(f"electra option 'generator_size' must be in (0, 1], got {self.generator_size}")
        if not (self.rtd_weight > 0.0 and math.isfinite(self.rtd_weight)):
            raise ConfigError(f"electra option 'rtd_weight' must be a positive number, got {self.rtd_weight}")
        if not (self.temperature > 0.0 and math.isfinite(self.temperature)):
            raise ConfigError(f"electra option 'temperature' must be a positive number, got {self.temperature}")


@dataclass
class PretrainConfig:
    """Everything ``pretrain`` needs besides the corpus and the output directory."""

    model: dict[str, Any] = field(default_factory=dict)   # BertConfig fields (and 'preset')
    data: DataOptions = field(default_factory=DataOptions)
    masking: MaskingOptions = field(default_factory=MaskingOptions)
    train: dict[str, Any] = field(default_factory=dict)   # TrainArgs fields (without out)
    electra: ElectraOptions = field(default_factory=ElectraOptions)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PretrainConfig:
        raw = load_yaml(path)
        unknown = [k for k in raw if k not in YAML_SECTIONS]
        if unknown:
            raise ConfigError(f"{path}: unknown section '{unknown[0]}'; valid sections: {', '.join(YAML_SECTIONS)}")
        for key in YAML_SECTIONS:
            if raw.get(key) is not None and not isinstance(raw[key], dict):
                raise ConfigError(f"{path}: section '{key}' must be a mapping")
        model = dict(raw.get("model") or {})
        BertConfig.from_dict({"vocab_size": 100, **model}, source=f"{path}: model")  # validate early
        train = dict(raw.get("train") or {})
        if "out" in train:
            raise ConfigError(f"{path}: train.out is not a config key; give --out on the command line")
        options_from_dict(TrainArgs, {"out": "-", **train}, f"{path}: train")  # validate early
        return cls(
            model=model,
            data=options_from_dict(DataOptions, dict(raw.get("data") or {}), f"{path}: data"),
            masking=options_from_dict(MaskingOptions, dict(raw.get("masking") or {}), f"{path}: masking"),
            train=train,
            electra=options_from_dict(ElectraOptions, dict(raw.get("electra") or {}), f"{path}: electra"),
        )


PRETRAIN_DEFAULTS = {"lr": 1e-4, "batch_size": 32, "warmup": 0.06, "max_grad_norm": 1.0, "weight_decay": 0.01,
                     "eval_every": 500, "save_every": 0, "log_every": 10,
                     # OUT/ holds the model with the lowest held-out MLM loss (the last one without eval data)
                     "best_metric": "mlm_loss", "greater_is_better": False}


# ELECTRA: OUT/ is the last discriminator (its held-out RTD loss rises as the generator gets better)
ELECTRA_DEFAULTS = {**PRETRAIN_DEFAULTS, "best_metric": None}


def resolve_train_args(out: str, config: PretrainConfig, overrides: dict[str, Any],
                       defaults: dict[str, Any] = PRETRAIN_DEFAULTS) -> TrainArgs:
    values = {**defaults, **config.train}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return options_from_dict(TrainArgs, {"out": out, **values}, "training options")


class PretrainingTask(Task):
    name = "pretraining"

    def __init__(self, corpus_paths: list[str], tokenizer, model_config: BertConfig, data: DataOptions,
                 masking: MaskingOptions, cache_dir: str | Path, init_state: dict | None = None,
                 init_source: str | None = None, log=None):
        import torch

        from bertcli.data import corpus as C
        from bertcli.masking import continuation_table
        from bertcli.tokenizer import check_max_length

        if data.objective is None:
            data = dataclasses.replace(data, objective=DEFAULT_OBJECTIVES.get(model_config.family, "mlm"))
        if masking.mask_prob is None:
            masking = dataclasses.replace(masking, mask_prob=DEFAULT_MASK_PROBS.get(model_config.family, 0.15))
        if data.objective in PAIR_OBJECTIVES and model_config.family not in PAIR_FAMILIES:
            raise ConfigError(
                f"--objective {data.objective} needs a sentence-pair head, which {model_config.family} has not "
                f"(families with one: {', '.join(PAIR_FAMILIES)}); use --objective mlm"
            )
        self.tok, self.config, self.data, self.masking = tokenizer, model_config, data, masking
        self.init_state, self.init_source = init_state, init_source
        check_max_length(data.max_seq_length, model_config.max_length, "--max-seq-length")
        if tokenizer.vocab_size > model_config.vocab_size:
            raise TokenizerError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model has {model_config.vocab_size} "
                f"embedding rows; use the model's tokenizer or a config with vocab_size >= {tokenizer.vocab_size}"
            )
        self.corpus = C.load_corpus(corpus_paths, tokenizer, cache_dir, documents=data.documents,
                                    encoding=data.encoding, errors=data.encoding_errors, log=log)
        self.train_docs, self.eval_docs = C.split_heldout(self.corpus.num_docs, data.eval_fraction)
        where = ", ".join(str(p) for p in corpus_paths)
        self.nsp = data.objective in PAIR_OBJECTIVES  # NSP or SOP, on the same pooler head
        self.sop = data.objective == "mlm+sop"
        if self.nsp:
            C.check_nsp_possible(self.corpus, self.train_docs, where, sop=self.sop)
        self.whole_word = continuation_table(tokenizer) if masking.whole_word else None
        self.special_ids = sorted(tokenizer.special_ids)
        self._epoch_cache: tuple[int, int, list] | None = None
        self._eval_batches: list | None = None
        self.summary = C.corpus_summary(self.corpus, self.train_docs, self.eval_docs)
        self._torch = torch

    # ---------------------------------------------------------- examples
    def _examples(self, doc_ids, seed: int) -> list:
        from bertcli.data import corpus as C

        if self.nsp:
            return C.nsp_examples(self.corpus, doc_ids, self.data.max_seq_length, self.data.short_seq_prob,
                                  seed, self.tok.cls_id, self.tok.sep_id, sop=self.sop)
        return C.packed_examples(self.corpus, doc_ids, self.data.max_seq_length, self.tok.cls_id, self.tok.sep_id)

    def _collate(self, examples) -> dict:
        torch = self._torch
        T = max(len(e.ids) for e in examples)
        n = len(examples)
        ids = torch.full((n, T), self.tok.pad_id, dtype=torch.long)
        types = torch.zeros((n, T), dtype=torch.long)
        att = torch.zeros((n, T), dtype=torch.long)
        for i, e in enumerate(examples):
            L = len(e.ids)
            ids[i, :L] = torch.from_numpy(e.ids.astype("int64"))
            types[i, :L] = torch.from_numpy(e.type_ids.astype("int64"))
            att[i, :L] = 1
        batch = {"input_ids": ids, "attention_mask": att, "token_type_ids": types}
        if self.nsp:
            batch["nsp_labels"] = torch.tensor([e.nsp for e in examples], dtype=torch.long)
        return batch

    def train_examples(self, epoch: int, seed: int) -> list:
        return self._examples(self.train_docs, seed)

    # ---------------------------------------------------------- Task
    def build_model(self):
        from bertcli.checkpoint import load_into
        from bertcli.heads import BertForPreTraining

        model = BertForPreTraining(self.config, nsp=self.nsp)
        if self.init_state is not None:
            load_into(model, self.init_state, self.init_source or "--init-from",
                      allow_missing=("mlm.", "nsp.", "bert.pooler."))
        return model

    def train_batches(self, epoch, generator, batch_size, rank, world_size):
        torch = self._torch
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        examples = self.train_examples(epoch, seed)
        order = torch.randperm(len(examples), generator=generator).tolist()
        glob = batch_size * world_size
        n_batches = len(order) // glob
        if n_batches == 0:
            if world_size > 1 or not order:
                from bertcli.errors import DataError

                raise DataError(
                    f"the corpus gives {len(order)} training examples, fewer than one global batch of {glob}; "
                    f"use a smaller --batch-size or a larger corpus"
                )
            n_batches, glob = 1, len(order)
            batch_size = len(order)
        out = []
        for b in range(n_batches):
            idx = order[b * glob + rank * batch_size: b * glob + (rank + 1) * batch_size]
            out.append(self._collate([examples[i] for i in idx]))
        return out

    def _mask(self, input_ids, generator):
        from bertcli.masking import mask_tokens

        m = self.masking
        return mask_tokens(input_ids, generator=generator, mask_id=self.tok.mask_id, special_ids=self.special_ids,
                           vocab_size=self.config.vocab_size, mask_prob=m.mask_prob,
                           mask_replace_prob=m.mask_replace_prob, random_replace_prob=m.random_replace_prob,
                           whole_word=self.whole_word)

    def _forward(self, model, batch, generator, device):
        torch = self._torch
        F = torch.nn.functional
        inputs, labels = self._mask(batch["input_ids"], generator)
        positions = labels != -100
        mlm_logits, nsp_logits = model(inputs.to(device), batch["attention_mask"].to(device),
                                       batch["token_type_ids"].to(device), mlm_positions=positions.to(device))
        targets = labels[positions].to(device)
        if targets.numel():
            mlm_loss = F.cross_entropy(mlm_logits.float(), targets)
        else:
            mlm_loss = mlm_logits.float().sum() * 0.0
        nsp_loss = None
        if self.nsp:
            nsp_loss = F.cross_entropy(nsp_logits.float(), batch["nsp_labels"].to(device))
        return mlm_logits, nsp_logits, targets, mlm_loss, nsp_loss

    def compute_loss(self, model, batch, generator, device):
        _, _, targets, mlm_loss, nsp_loss = self._forward(model, batch, generator, device)
        loss = mlm_loss + nsp_loss if nsp_loss is not None else mlm_loss
        logs = {"tokens": int(batch["attention_mask"].sum()), "masked": int(targets.numel())}
        return loss, logs

    def evaluate(self, model, device) -> dict[str, float]:
        torch = self._torch
        from bertcli.train import make_generator

        if len(self.eval_docs) == 0:
            return {}
        if self._eval_batches is None:
            examples = self._examples(self.eval_docs, seed=12345)[: self.data.max_eval_examples]
            self._eval_batches = [self._collate(examples[i:i + 64]) for i in range(0, len(examples), 64)]
        gen = make_generator("eval-masks")  # the same masks at every evaluation
        loss_sum, n_tok, correct, nsp_correct, n_pairs = 0.0, 0, 0, 0, 0
        for batch in self._eval_batches:
            mlm_logits, nsp_logits, targets, _, _ = self._forward(model, batch, gen, device)
            if targets.numel():
                loss_sum += float(torch.nn.functional.cross_entropy(mlm_logits.float(), targets, reduction="sum"))
                correct += int((mlm_logits.argmax(-1) == targets).sum())
                n_tok += targets.numel()
            if self.nsp:
                nsp_correct += int((nsp_logits.argmax(-1).cpu() == batch["nsp_labels"]).sum())
                n_pairs += len(batch["nsp_labels"])
        if n_tok == 0:
            return {}
        mlm_loss = loss_sum / n_tok
        out = {"mlm_loss": mlm_loss, "mlm_accuracy": correct / n_tok, "perplexity": math.exp(min(mlm_loss, 50.0))}
        if self.nsp and n_pairs:
            out["sop_accuracy" if self.sop else "nsp_accuracy"] = nsp_correct / n_pairs
        return out

    def checkpoint_payload(self, model) -> dict:
        return {"state": model.state_dict(), "config": self.config, "tokenizer": self.tok, "task": "pretraining",
                "bertcli": {"objective": self.data.objective, "max_seq_length": self.data.max_seq_length}}


# ============================================================ library entry point
def build_pretraining(corpus: list[str], out: str, *, tokenizer: str | None = None, preset: str | None = None,
                      arch: str | None = None,
                      config: PretrainConfig | None = None, init_from: str | None = None,
                      data_overrides: dict | None = None, masking_overrides: dict | None = None,
                      train_overrides: dict | None = None, electra_overrides: dict | None = None,
                      log=None) -> tuple[PretrainingTask, TrainArgs]:
    """Resolve options, load the tokenizer / init weights and the corpus; return (task, args)."""
    from bertcli.checkpoint import load_checkpoint
    from bertcli.tokenizer import Tokenizer

    config = config or PretrainConfig()
    data = merge_options(config.data, data_overrides or {})
    masking = merge_options(config.masking, masking_overrides or {})
    electra = data.objective == "electra"
    args = resolve_train_args(out, config, train_overrides or {}, ELECTRA_DEFAULTS if electra else PRETRAIN_DEFAULTS)
    if electra and arch is None and init_from is None and "arch" not in config.model and "family" not in config.model:
        arch = "electra"  # the discriminator is an ELECTRA

    init_state = None
    if init_from is not None:
        ckpt = load_checkpoint(init_from)
        if preset is not None or arch is not None or config.model:
            raise ConfigError("--init-from takes the model shape from the checkpoint; drop --preset / --arch / the "
                              "model: section")
        model_cfg = ckpt.config
        init_state = ckpt.state
        tok_dir = tokenizer or init_from
        tok = Tokenizer.load(tok_dir)
        if tok.vocab_size != model_cfg.vocab_size:
            raise TokenizerError(
                f"{tok_dir}: the tokenizer has {tok.vocab_size} tokens but {init_from} has {model_cfg.vocab_size} "
                f"embedding rows; continue pretraining with the checkpoint's own tokenizer (omit --tokenizer)"
            )
    else:
        if tokenizer is None:
            raise ConfigError("pretraining from scratch needs --tokenizer DIR (a train-vocab output or a checkpoint)")
        tok = Tokenizer.load(tokenizer)
        model = dict(config.model)
        if arch is not None:
            model["arch"] = arch
        if preset is not None:
            model = {k: v for k, v in model.items() if k == "preset" or k not in ("hidden_size", "num_layers",
                                                                               "num_heads", "intermediate_size")}
            model["preset"] = preset
        elif "preset" not in model and "arch" not in model and not any(
                k in model for k in ("hidden_size", "num_hidden_layers", "num_layers")):
            model["preset"] = "mini"
        model.setdefault("vocab_size", tok.vocab_size)
        model.setdefault("pad_token_id", tok.pad_id)
        model_cfg = BertConfig.from_dict(model, source="model config")
    cache_dir = data.cache_dir or str(Path(out) / "cache")
    if electra:
        from bertcli.tasks.electra import GENERATOR_DIR, ElectraPretrainingTask

        init_gen = None
        if init_from is not None and (Path(init_from) / GENERATOR_DIR).is_dir():
            init_gen = load_checkpoint(Path(init_from) / GENERATOR_DIR).state
        task = ElectraPretrainingTask(corpus, tok, model_cfg, data, masking, cache_dir, init_state=init_state,
                                      init_source=init_from, log=log, init_generator=init_gen,
                                      electra=merge_options(config.electra, electra_overrides or {}))
    else:
        task = PretrainingTask(corpus, tok, model_cfg, data, masking, cache_dir, init_state=init_state,
                               init_source=init_from, log=log)
    task.run_config = {
        "corpus": [str(c) for c in corpus], "tokenizer": tokenizer, "init_from": init_from,
        "model": model_cfg.to_dict(), "data": dataclasses.asdict(data), "masking": dataclasses.asdict(task.masking),
        "corpus_summary": task.summary,
    }
    if electra:
        task.run_config["electra"] = {**dataclasses.asdict(task.electra), "generator": task.gen_config.to_dict()}
    return task, args


def pretrain(corpus: list[str], out: str, **kwargs) -> dict:
    """Pretrain a BERT on ``corpus`` into ``out`` (see :func:`build_pretraining` for the options)."""
    from bertcli.locks import run_lock
    from bertcli.train import fit

    with run_lock(out):
        task, args = build_pretraining(corpus, out, **kwargs)
        summary = fit(task, args)
    summary["corpus"] = task.summary
    return summary
