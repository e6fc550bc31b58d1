"""CPU time of one training step: `pretrain --objective electra` against `--objective mlm`.

Equal compute for the ELECTRA / MLM comparison (benchmarks/electra_quality.sh): on a shared,
loaded machine wall time says little, so the ELECTRA run gets the MLM run's step count scaled by
the ratio of CPU time per step (time.process_time, this process only) measured here. Both tasks
are built by bertcli's own pretraining code with the same corpus, tokenizer, batch, sequence
length and precision; a step is what the Trainer does (masking, forward, loss, backward, clipping,
AdamW). Repetitions alternate (mlm, electra, mlm, ...) so that the load hits both alike; the
median ratio is printed as JSON.

    python benchmarks/electra_cost.py --corpus ../shared/data/corpus --tokenizer W/vocab --encoding auto
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--encoding", default="utf-8")
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--generator-size", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args()

    from bertcli.device import autocast, resolve_device, resolve_precision
    from bertcli.tasks.pretraining import build_pretraining
    from bertcli.train import make_generator, param_groups

    device = resolve_device("cpu")
    precision = resolve_precision(a.precision, device)
    sides = {}
    with tempfile.TemporaryDirectory() as tmp:
        for objective, arch in (("mlm", None), ("electra", "electra")):
            task, _ = build_pretraining([a.corpus], f"{tmp}/{objective}", tokenizer=a.tokenizer, preset=a.preset,
                                        arch=arch, data_overrides={"objective": objective, "max_seq_length": a.seq,
                                                                   "encoding": a.encoding,
                                                                   "cache_dir": f"{tmp}/cache"},
                                        electra_overrides={"generator_size": a.generator_size})
            torch.manual_seed(0)
            model = task.build_model().train()
            opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4)
            batches = task.train_batches(0, make_generator("bench"), a.batch_size, 0, 1)
            params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
            sides[objective] = (task, model, opt, batches, params)

        def step(objective: str, i: int) -> None:
            task, model, opt, batches, _ = sides[objective]
            with autocast(device, precision):
                loss, _ = task.compute_loss(model, batches[i % len(batches)], make_generator("step", i), device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        for objective in sides:  # warm-up
            step(objective, 0)
        cpu = {k: [] for k in sides}
        for rep in range(a.reps):
            for objective in sides:
                t0 = time.process_time()
                for i in range(a.steps):
                    step(objective, 1 + rep * a.steps + i)
                cpu[objective].append((time.process_time() - t0) / a.steps)
    ratios = [e / m for e, m in zip(cpu["electra"], cpu["mlm"], strict=True)]
    print(json.dumps({
        "precision": precision, "threads": torch.get_num_threads(), "batch_size": a.batch_size, "seq": a.seq,
        "mlm_cpu_s_per_step": statistics.median(cpu["mlm"]), "electra_cpu_s_per_step": statistics.median(cpu["electra"]),
        "ratio": statistics.median(ratios), "ratios": ratios,
        "mlm_parameters": sides["mlm"][4], "electra_parameters": sides["electra"][4],
    }))


if __name__ == "__main__":
    main()
