"""``--model NAME``: models already in the local Hugging Face cache, found offline.

A ``--model`` that is not an existing path but looks like a Hub name (``bert-base-uncased``,
``sentence-transformers/all-MiniLM-L6-v2``) is looked up in the cache that ``huggingface_hub``
fills, without any network access::

    $HF_HUB_CACHE  (else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub)
      models--ORG--NAME/
        refs/main                 the commit hash that "main" (or another branch or tag) points to
        snapshots/<commit>/       the files of that commit (config.json, model.safetensors, ...)

The revision is ``main`` unless given: ``--revision REV`` (finetune) or ``NAME@REV`` in any
command, where REV is a branch or tag (a file under ``refs/``) or a commit hash (a snapshot, or a
unique prefix of one). :func:`resolve_model` is called where every command resolves ``--model``
(``checkpoint.check_model_dir`` and ``Tokenizer.load``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bertcli.errors import CheckpointError

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")
_HEX = re.compile(r"^[0-9a-f]{7,40}$")


def cache_dir() -> Path:
    """The Hugging Face hub cache directory, as ``huggingface_hub`` chooses it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def split_revision(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """``NAME@REV`` -> (NAME, REV); an explicit ``revision`` wins over the suffix."""
    if "@" in spec:
        name, _, rev = spec.rpartition("@")
        if name and rev:
            return name, revision or rev
    return spec, revision


def looks_like_repo_id(name: str) -> bool:
    """``NAME`` or ``ORG/NAME`` of letters, digits, ``.``, ``_``, ``-`` (not ``./x``, ``/abs`` or ``a/b/c``)."""
    return bool(REPO_ID.match(name)) and ".." not in name and not name.endswith(".")


def repo_folder(name: str) -> str:
    """The cache folder of a model repository: ``models--ORG--NAME``."""
    return "models--" + name.replace("/", "--")


def resolve_model(spec: str | os.PathLike, revision: str | None = None, flag: str = "--model") -> Path:
    """The directory ``spec`` names: an existing path as it is, else the cached snapshot of a Hub name.

    A name that is in the cache under no matching revision is a CheckpointError that says where it
    looked and how to get the model; anything else that is not a path is returned unchanged (the
    caller's "no such directory" error follows).
    """
    path = Path(spec)
    if path.exists() and revision is None:
        return path
    name, rev = split_revision(str(spec), revision)
    if Path(name).exists():
        if rev is None:
            return Path(name)
        raise CheckpointError(f"{flag} {name}: is a local directory; a revision ({rev}) applies only to "
                              f"a model name in the Hugging Face cache")
    if not looks_like_repo_id(name):
        return path
    root = cache_dir()
    repo = root / repo_folder(name)
    wanted = rev or "main"
    args = f"{name} --revision {wanted}" if rev else name
    how = (f"download it once with `hf download {args}` (or `huggingface-cli download {args}`), "
           f"set HF_HUB_CACHE or HF_HOME to the cache that holds it, or pass a checkpoint directory")
    if not repo.is_dir():
        raise CheckpointError(
            f"{flag} {spec}: no such checkpoint directory, and the model '{name}' is not in the Hugging Face "
            f"cache (looked for {repo}); {how}")
    snapshot = _snapshot(repo, wanted)
    if snapshot is None:
        known = sorted({p.name for p in (repo / "refs").rglob("*") if p.is_file()}
                       | {p.name[:12] for p in (repo / "snapshots").glob("*") if p.is_dir()})
        raise CheckpointError(
            f"{flag} {spec}: the Hugging Face cache holds '{name}' ({repo}) but not revision '{wanted}' "
            f"(no refs/{wanted} and no snapshot of that commit; cached: {', '.join(known) or 'nothing'}); {how}")
    return snapshot


def _snapshot(repo: Path, revision: str) -> Path | None:
    snapshots = repo / "snapshots"
    ref = repo / "refs" / revision
    if ".." not in Path(revision).parts and ref.is_file():
        commit = ref.read_text(encoding="utf-8", errors="replace").strip()
        if (snapshots / commit).is_dir():
            return snapshots / commit
        return None
    if (snapshots / revision).is_dir() and "/" not in revision and revision not in ("", ".", ".."):
        return snapshots / revision
    if _HEX.match(revision) and snapshots.is_dir():
        found = [p for p in snapshots.iterdir() if p.is_dir() and p.name.startswith(revision)]
        if len(found) == 1:
            return found[0]
    return None
