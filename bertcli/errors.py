"""The bertcli error hierarchy.

Every error a user can cause is a :class:`BertcliError` whose message says what was wrong,
where (file, line, key) and what to do. The CLI prints that one message on stderr and exits 1;
``--debug`` shows the traceback.
"""

from __future__ import annotations


class BertcliError(Exception):
    """Base class: a user-facing error with a message meant for people."""

    exit_code = 1


class ConfigError(BertcliError):
    """A configuration value, YAML file or config.json is invalid."""


class CheckpointError(BertcliError):
    """A checkpoint directory or weight file is missing, corrupt or does not match."""


class TokenizerError(BertcliError):
    """A tokenizer cannot be loaded or does not match the model."""


class DataError(BertcliError):
    """An input file (text, CSV, JSONL, CoNLL, SQuAD) is missing or malformed."""


class DeviceError(BertcliError):
    """A requested device or precision is not available."""


class TrainingError(BertcliError):
    """Training cannot continue (non-finite loss, failed checkpoint write, ...)."""


class ExportError(BertcliError):
    """A model cannot be exported (bertcli export), or the exported graph does not match PyTorch."""
