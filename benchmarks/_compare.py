"""Shared pieces of the bertcli-vs-Trainer benchmarks (bench_finetune.py, bench_ner.py).

Run interleaved repetitions of both tools, take the median wall time and ratio, and print
(and append to ``--out``) the markdown table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TOOLS = ("bertcli", "trainer")


def interleaved(repeats: int, only: str | None, run: Callable[[str, int], dict]) -> dict[str, list[dict]]:
    """``run(tool, rep)`` for each repetition, bertcli first on even reps and the Trainer first on odd ones."""
    results: dict[str, list[dict]] = {t: [] for t in TOOLS}
    for rep in range(repeats):
        for tool in TOOLS if rep % 2 == 0 else TOOLS[::-1]:
            if only and tool != only:
                continue
            results[tool].append(run(tool, rep))
    return results


def median_walls(results: dict[str, list[dict]]) -> tuple[dict[str, float], str]:
    """({tool: median wall seconds}, "bertcli/Trainer time ratio" or "-" when only one tool ran)."""
    med = {t: float(np.median([r["wall"] for r in rs])) for t, rs in results.items() if rs}
    ratio = f"{med['bertcli'] / med['trainer']:.2f}x" if len(med) == 2 else "-"
    return med, ratio


def emit_table(header: str, lines: list[str], out: str | None) -> None:
    """Print the header and the markdown table; append both to ``out`` when given."""
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write("\n" + table)


def add_common_arguments(ap, *, epochs: int, lr: float, batch_size: int) -> None:
    """The options both benchmarks take: hyperparameters, repetitions, threads, --only and --out."""
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both tools")
    ap.add_argument("--only", choices=list(TOOLS), default=None)
    ap.add_argument("--out", default=None, help="append the markdown table to this file")
