"""``torchrun`` for the inference commands (``index``, ``embed``): one process group for the command's length.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`distributed` starts a gloo process group (the ranks only meet at
barriers; the embedding itself runs on each rank's own device, ``cuda:LOCAL_RANK`` on GPUs) and yields the rank;
without it, it yields 0 and does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def distributed() -> Iterator[int]:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        yield 0
        return
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo")
    try:
        yield dist.get_rank()
    finally:
        if own:
            dist.destroy_process_group()
