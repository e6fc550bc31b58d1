"""torchrun sharding: ``index`` and ``embed`` under ``torchrun --nproc-per-node 2`` (CPU, gloo) write what one
process writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args: str) -> None:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([exe, "--standalone", "--nproc-per-node", "2", "-m", "bertcli", *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_torchrun_index_and_embed_equal_one_process(tiny_model_dir, tmp_path, cli):
    import torch

    from bertcli.retrieval.index import open_index

    docs = [f"document number {i} " + "word " * (i % 7) for i in range(23)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                              for i, t in enumerate(docs)))
    (tmp_path / "t.txt").write_text("\n".join(docs) + "\n")
    common = ["--chunk-size", "4", "--device", "cpu", "--precision", "fp32"]
    _torchrun("index", "--model", str(tiny_model_dir), str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "i2"),
              *common)
    _torchrun("embed", "--model", str(tiny_model_dir), "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "e2.npy"),
              *common)
    assert cli("index", "--model", tiny_model_dir, tmp_path / "c.jsonl", "--out", tmp_path / "i1", *common).exit_code == 0
    assert cli("embed", "--model", tiny_model_dir, "-i", tmp_path / "t.txt", "-o", tmp_path / "e1.npy",
               *common).exit_code == 0
    a, b = open_index(tmp_path / "i1"), open_index(tmp_path / "i2")
    assert a.ids == b.ids and a.manifest["shards"] == b.manifest["shards"] and "pending" not in b.manifest
    assert torch.equal(a.vectors(), b.vectors())
    assert np.array_equal(np.load(tmp_path / "e1.npy"), np.load(tmp_path / "e2.npy"))
    assert not list(tmp_path.glob(".*parts*"))  # the part files are gone
