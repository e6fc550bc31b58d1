"""The server's settings (the options of ``bertcli serve``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from bertcli.errors import ConfigError

API_KEY_ENV = "BERTCLI_API_KEY"


@dataclass
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    precision: str = "auto"
    max_batch_tokens: int | None = None  # default: embed's per-device batch budget
    max_wait_ms: float = 5.0
    max_queue: int = 1024                # texts waiting for the model before 503
    max_request_texts: int = 256
    max_request_bytes: int = 1_000_000
    truncate: bool = True
    allow_dimensions: bool = False
    batch_size: int = 64                 # inputs per forward pass of classifiers, taggers, QA
    api_key: str | None = None
    grace: float = 30.0
    workers: int = 1
    threads: int | None = None           # torch threads per worker process
    retry_after: int = 1
    access_log: bool = True
    served_name: str | None = None

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        positive = {"--max-queue": self.max_queue, "--max-request-texts": self.max_request_texts,
                    "--max-request-bytes": self.max_request_bytes, "--batch-size": self.batch_size,
                    "--workers": self.workers}
        if self.max_batch_tokens is not None:
            positive["--max-batch-tokens"] = self.max_batch_tokens
        if self.threads is not None:
            positive["--threads"] = self.threads
        for flag, value in positive.items():
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535 (0: any free port), got {self.port}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms must not be negative, got {self.max_wait_ms}")
        if self.grace < 0:
            raise ConfigError(f"--grace must not be negative, got {self.grace}")

    def to_dict(self) -> dict:
        return asdict(self)

    def apply_threads(self) -> None:
        """Torch threads: --threads, else the cores shared out among the worker processes."""
        import torch

        n = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
        torch.set_num_threads(n)
