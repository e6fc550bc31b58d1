"""Helpers for the serve tests: tiny checkpoints of every task, and a real server on a free port."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

from conftest import TINY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_task_model(out: Path, tokenizer_dir: Path, task: str, *, labels=None, bertcli=None, seed: int = 0) -> Path:
    """A randomly initialised tiny checkpoint with the head of ``task``, saved as fine-tuning saves it."""
    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.heads import (
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
    )
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    cfg = BertConfig(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, **TINY)
    torch.manual_seed(seed)
    hf_extra = None
    if task == "question-answering":
        model = BertForQuestionAnswering(cfg)
    elif task == "token-classification":
        model = BertForTokenClassification(cfg, len(labels))
    else:
        model = BertForSequenceClassification(cfg, 1 if task == "regression" else len(labels))
    if labels:
        hf_extra = {"id2label": {str(i): lab for i, lab in enumerate(labels)},
                    "label2id": {lab: i for i, lab in enumerate(labels)}}
    if task == "regression":
        hf_extra = {"problem_type": "regression"}
    return save_checkpoint(out, model.state_dict(), cfg, tok, task=task, hf_extra=hf_extra,
                           bertcli={"max_length": 32, **(bertcli or {})})


class ServerThread:
    """``bertcli.serve.app.create_app(options)`` under uvicorn in a thread, on a free loopback port."""

    def __init__(self, **options):
        import uvicorn

        from bertcli.serve.app import create_app, setup_logging
        from bertcli.serve.options import ServeOptions

        self.port = free_port()
        self.options = ServeOptions(port=self.port, device="cpu", precision="fp32", **options)
        setup_logging(self.options)
        config = uvicorn.Config(create_app(self.options), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        end = time.time() + 60
        while not self.server.started:
            if time.time() > end or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_cli_server(*args: str, env: dict | None = None, timeout: float = 90):
    """``python -m bertcli serve ARGS --port 0`` in a subprocess; (process, url, stderr lines so far)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "bertcli", "serve", *args, "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT)
    lines: list[str] = []
    found: dict = {}

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if m and "url" not in found:
                found["url"] = m.group(1)

    threading.Thread(target=read, daemon=True).start()
    end = time.time() + timeout
    while "url" not in found:
        if proc.poll() is not None or time.time() > end:
            proc.kill()
            raise RuntimeError("bertcli serve did not start:\n" + "".join(lines))
        time.sleep(0.05)
    return proc, found["url"], lines
