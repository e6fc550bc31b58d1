"""bertcli: a command-line toolchain for BERT."""

__version__ = "0.1.0"
