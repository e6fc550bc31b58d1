"""The practitioner's kit (issue 19a): curves.png and `bertcli plot`, --report-to tensorboard, restarts
(--seeds / --restarts), finetune --max-steps / --eval-every / --save-every, cached model names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import finetune_cli, finetune_options

from bertcli.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

POS = ["a lovely film", "great acting", "i loved it", "wonderful and warm", "a brilliant plot", "superb music"]
NEG = ["a boring film", "awful acting", "i hated it", "dull and cold", "a terrible plot", "poor music"]


def sentiment_csv(path: Path, n: int = 2) -> Path:
    rows = ["text,label"]
    for i in range(n):
        rows += [f"{t} {i},pos" for t in POS] + [f"{t} {i},neg" for t in NEG]
    path.write_text("\n".join(rows) + "\n")
    return path


def data(tmp_path) -> dict:
    return {"train": str(sentiment_csv(tmp_path / "train.csv")), "dev": str(sentiment_csv(tmp_path / "dev.csv", 1)),
            "text_column": "text", "label_column": "label"}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def decode_png(path: Path):
    """The decoded RGBA pixels (H, W, 4) of a PNG file, via matplotlib (Pillow)."""
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(str(path))


def color_pixels(img, color: str) -> int:
    """Pixels of ``img`` within a small distance of the matplotlib colour ``color``."""
    import numpy as np
    from matplotlib.colors import to_rgb

    rgb = np.asarray(to_rgb(color))
    return int((np.abs(img[..., :3] - rgb).max(axis=-1) < 0.03).sum())


# ------------------------------------------------------------ one run: curves, max-steps, eval-every, tensorboard
@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """A tiny classification run: --max-steps 9 --eval-every 3 --save-every 4 --log-every 2, TensorBoard, --test."""
    d = tmp_path_factory.mktemp("kit")
    kw = data(d)
    out = d / "run"
    summary = finetune_cli("--model", tiny_model_dir, "--train", kw["train"], "--dev", kw["dev"], "--test", kw["dev"],
                           "--text-column", "text", "--label-column", "label", "--out", out, "--epochs", "1",
                           "--max-steps", "9", "--eval-every", "3", "--save-every", "4", "--batch-size", "4",
                           "--lr", "1e-3", "--log-every", "2", "--report-to", "tensorboard", "--quiet")
    return out, summary


def test_max_steps_and_eval_every(run):
    out, summary = run
    recs = records(out)
    assert summary["steps"] == 9 and summary["total_steps"] == 9  # 24 examples / 4 = 6 steps an epoch: 1.5 epochs
    assert [r["step"] for r in recs if "eval" in r] == [3, 6, 9]
    assert [r["step"] for r in recs if "loss" in r and "lr" in r] == [2, 4, 6, 8, 9]  # --log-every 2, and the last
    assert summary["epochs"] == 1  # the second epoch was entered
    from bertcli.train import checkpoint_steps

    kept = [s for s, _ in checkpoint_steps(out)]
    assert 8 in kept or 9 in kept  # --save-every 4 wrote step-8; the final step 9 is saved too
    assert summary["best_step"] in kept


def test_curves_png_written_at_the_end(run):
    out, _ = run
    img = decode_png(out / "curves.png")
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert color_pixels(img, "C0") > 50  # the run's line


def test_curves_series_equal_metrics_jsonl(run):
    from bertcli.curves import panel_keys, read_curves

    out, summary = run
    curves = read_curves(out)
    recs = records(out)
    train = [r for r in recs if "loss" in r and "lr" in r]
    assert curves.series["train_loss"] == ([r["step"] for r in train], [r["loss"] for r in train])
    assert curves.series["lr"][1] == [r["lr"] for r in train]
    evals = [r for r in recs if "eval" in r]
    assert curves.series["accuracy"] == ([r["step"] for r in evals], [r["eval"]["accuracy"] for r in evals])
    assert (curves.best_metric, curves.best_step) == ("accuracy", summary["best_step"])
    assert panel_keys([curves])[:2] == ["train_loss", "lr"] and "macro_f1" in panel_keys([curves])


def test_tensorboard_events_hold_metrics_jsonl_scalars(run):
    pytest.importorskip("tensorboard")
    from bertcli.curves import read_tensorboard, scalars

    out, _ = run
    expected: dict[str, list[tuple[int, float]]] = {}
    for rec in records(out):
        for tag, value in scalars(rec).items():
            expected.setdefault(tag, []).append((rec["step"], value))
    assert {"train/loss", "train/lr", "eval/accuracy", "eval/loss", "test/accuracy"} <= set(expected)
    got = read_tensorboard(out)
    assert set(got) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        for (_, a), (_, b) in zip(got[tag], points, strict=True):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-12), tag  # event files store float32


def test_tensorboard_resume_drops_events_after_the_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    """An interrupted run resumed: the event files equal metrics.jsonl (no duplicated or stale steps)."""
    pytest.importorskip("tensorboard")
    import signal

    from bertcli.curves import read_tensorboard, scalars
    from bertcli.tasks.classification import SequenceClassificationTask, finetune
    from bertcli.train import TrainingInterrupted

    opts = finetune_options(tiny_model_dir, tmp_path, **data(tmp_path), epochs=2, batch_size=4, eval_every=2,
                            report_to="tensorboard")
    original, calls = SequenceClassificationTask.compute_loss, {"n": 0}

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGINT)
        return original(self, *a, **k)

    monkeypatch.setattr(SequenceClassificationTask, "compute_loss", interrupting)
    with pytest.raises(TrainingInterrupted):
        finetune(opts)
    monkeypatch.setattr(SequenceClassificationTask, "compute_loss", original)
    import dataclasses

    finetune(dataclasses.replace(opts, resume="auto"))
    expected: dict = {}
    for rec in records(Path(opts.out)):
        for tag in scalars(rec):
            expected.setdefault(tag, []).append(rec["step"])
    got = read_tensorboard(opts.out)
    assert {t: [s for s, _ in v] for t, v in got.items()} == expected


def test_plot_overlays_runs_one_line_each(run, tmp_path, cli):
    from bertcli.curves import build_figure, read_curves

    out, _ = run
    other = tmp_path / "other"
    other.mkdir()
    # a second "run": the same records with the loss halved, to get a second distinct line
    lines = []
    for rec in records(out):
        if "loss" in rec and "lr" in rec:
            rec["loss"] /= 2
        if "eval" in rec:
            rec["eval"]["accuracy"] = 1 - rec["eval"]["accuracy"] / 2 - rec["step"] / 100
        lines.append(json.dumps(rec))
    (other / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    png = tmp_path / "both.png"
    r = cli("plot", out, other, "--out", png, "--metric", "train_loss,accuracy", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["panels"] == ["train_loss", "accuracy"] and result["runs"] == ["run", "other"]
    img = decode_png(png)
    assert color_pixels(img, "C0") > 50 and color_pixels(img, "C1") > 50 and color_pixels(img, "C2") == 0
    fig = build_figure([read_curves(out), read_curves(other)], ["train_loss", "accuracy"])
    for ax in fig.axes[:2]:
        assert len([ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]) == 2
    bad = cli("plot", out, "--out", tmp_path / "x.png", "--metric", "bleu")
    assert bad.exit_code == 1 and "valid values: train_loss, lr" in bad.stderr
    missing = cli("plot", tmp_path / "nowhere", "--out", tmp_path / "y.png")
    assert missing.exit_code == 1 and "no metrics.jsonl" in missing.stderr


# ------------------------------------------------------------ restarts
def test_seeds_keep_the_best_and_the_table_equals_each_run(tiny_model_dir, tmp_path):
    from bertcli.checkpoint import read_weights
    from bertcli.restarts import seed_dir
    from bertcli.tasks.classification import finetune

    opts = finetune_options(tiny_model_dir, tmp_path, **data(tmp_path), epochs=2, batch_size=4, seeds="3,1,4",
                            metric="loss")
    table = finetune(opts)
    out = Path(opts.out)
    assert [r["seed"] for r in table["runs"]] == [3, 1, 4]
    for row in table["runs"]:
        evals = [r for r in records(seed_dir(out, row["seed"])) if "eval" in r]
        best = min(evals, key=lambda r: r["eval"]["loss"])  # the first of equals, as the loop keeps it
        assert row["dev"] == best["eval"]["loss"] and row["best_step"] == best["step"]
        summary = [r for r in records(seed_dir(out, row["seed"])) if "summary" in r][-1]["summary"]
        assert row["time_s"] == summary["time_total_s"] and row["steps"] == summary["steps"]
    devs = [r["dev"] for r in table["runs"]]
    best_row = min(table["runs"], key=lambda r: r["dev"])
    assert table["best_seed"] == best_row["seed"] and table["best_dev"] == min(devs)
    import statistics

    assert table["mean"] == pytest.approx(statistics.fmean(devs)) and table["std"] == pytest.approx(statistics.stdev(devs))
    # OUT is the best seed's best checkpoint
    best_ckpt = seed_dir(out, best_row["seed"]) / "checkpoints" / f"step-{best_row['best_step']}"
    a, b = read_weights(out / "model.safetensors"), read_weights(best_ckpt / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert json.loads((out / "seeds.json").read_text())["best_seed"] == table["best_seed"]
    md = (out / "seeds.md").read_text()
    assert f"| {table['best_seed']} (best) |" in md and "mean" in md
    img = decode_png(out / "curves.png")
    assert all(color_pixels(img, f"C{i}") > 50 for i in range(3))  # one line per seed
    # the seeds differ (else restarts would be pointless)
    assert len({json.dumps(r["dev"]) for r in table["runs"]}) > 1 or len({r["best_step"] for r in table["runs"]}) > 1
    # each seed's run resumes on its own: rerunning with --resume auto retrains nothing
    again = finetune(finetune_options(tiny_model_dir, tmp_path, **data(tmp_path), epochs=2, batch_size=4,
                                      seeds="3,1,4", metric="loss", resume="auto"))
    assert [r["dev"] for r in again["runs"]] == devs and again["best_seed"] == table["best_seed"]
    from bertcli.checkpoint import load_checkpoint

    assert load_checkpoint(out).config.hidden_size == 32


def test_restarts_cli_and_option_errors(tiny_model_dir, tmp_path):
    from bertcli.restarts import seed_list

    kw = data(tmp_path)
    table = finetune_cli("--model", tiny_model_dir, "--train", kw["train"], "--dev", kw["dev"], "--text-column", "text",
                         "--label-column", "label", "--out", tmp_path / "r", "--restarts", "2", "--seed", "7",
                         "--max-steps", "2", "--batch-size", "8", "--quiet")
    assert [r["seed"] for r in table["runs"]] == [7, 8] and (tmp_path / "r" / "seed-8" / "curves.png").is_file()
    assert all(r["steps"] == 2 for r in table["runs"])
    from bertcli.cli._common import err_console
    from bertcli.cli.finetune import _render_seeds

    with err_console.capture() as cap:
        _render_seeds(table, str(tmp_path / "r"))
    shown = cap.get()
    assert f"{table['runs'][0]['dev']:.4f}" in shown and f"kept seed {table['best_seed']}" in shown

    def opts(**k):
        return finetune_options(tiny_model_dir, tmp_path, **{**kw, **k})

    assert seed_list(opts(seeds="0, 1,2")) == [0, 1, 2]
    for bad, msg in [(dict(seeds="0,x"), "'x' is not an integer"), (dict(seeds="1,1"), "repeated"),
                     (dict(seeds="0,1", restarts=2), "not both"), (dict(restarts=0), "at least 1"),
                     (dict(seeds="0,1", dev=None), "need --dev"),
                     (dict(seeds="0,1", resume="x/checkpoints/step-1"), "takes 'auto'"),
                     (dict(max_steps=0), "--max-steps"), (dict(eval_every=-1), "--eval-every"), (dict(log_every=0), "--log-every"),
                     (dict(report_to="wandb"), "valid values: none, tensorboard")]:
        with pytest.raises(ConfigError, match=msg):
            opts(**bad).validate()


# ------------------------------------------------------------ cached model names
def fake_cache(root: Path, model_dir: Path, name: str = "acme/tiny-bert") -> tuple[Path, str, str]:
    """A Hugging Face cache tree with two snapshots of ``name``: main -> commit A, tag v1 -> commit B."""
    repo = root / ("models--" + name.replace("/", "--"))
    a, b = "a" * 40, "b1" + "0" * 38
    for commit in (a, b):
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in model_dir.iterdir():
            if f.is_file():
                blob = repo / "blobs" / f"{commit[:4]}-{f.name}"
                blob.parent.mkdir(exist_ok=True)
                shutil.copy(f, blob)
                (snap / f.name).symlink_to(Path("../..") / "blobs" / blob.name)  # as huggingface_hub links them
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(a)
    (repo / "refs" / "v1").write_text(b)
    cfg = json.loads((repo / "snapshots" / b / "config.json").read_text())
    cfg["marker"] = "v1"
    (repo / "snapshots" / b / "config.json").unlink()
    (repo / "snapshots" / b / "config.json").write_text(json.dumps(cfg))
    return repo, a, b


def test_cache_resolves_by_name_and_revision(tiny_model_dir, tmp_path, monkeypatch, cli):
    from bertcli.checkpoint import load_checkpoint
    from bertcli.hub import cache_dir, resolve_model

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    repo, a, b = fake_cache(tmp_path / "cache", tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("acme/tiny-bert") == repo / "snapshots" / a
    assert resolve_model("acme/tiny-bert", "v1") == repo / "snapshots" / b
    assert resolve_model("acme/tiny-bert@v1") == repo / "snapshots" / b
    assert resolve_model("acme/tiny-bert", a) == repo / "snapshots" / a  # a commit hash
    assert resolve_model("acme/tiny-bert", "b100000") == repo / "snapshots" / b  # a unique prefix
    assert "marker" not in load_checkpoint("acme/tiny-bert").hf_config
    assert load_checkpoint("acme/tiny-bert@v1").hf_config["marker"] == "v1"
    # an existing directory wins over the cache
    (tmp_path / "acme" / "tiny-bert").mkdir(parents=True)
    assert resolve_model("acme/tiny-bert") == Path("acme/tiny-bert")
    with pytest.raises(CheckpointError, match="is a local directory; a revision"):
        resolve_model("acme/tiny-bert", "v1")
    shutil.rmtree(tmp_path / "acme")
    # every command resolves --model there: tokenize (Tokenizer.load) and info (load_checkpoint)
    r = cli("tokenize", "--model", "acme/tiny-bert", "hello world", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["tokens"][1] == "hello"
    r = cli("info", "--model", "acme/tiny-bert@v1")
    assert r.exit_code == 0, r.output
    # finetune --revision
    kw = data(tmp_path)
    summary = finetune_cli("--model", "acme/tiny-bert", "--revision", "v1", "--train", kw["train"],
                           "--text-column", "text", "--label-column", "label", "--out", tmp_path / "ft",
                           "--max-steps", "1", "--quiet")
    assert summary["steps"] == 1
    import yaml

    assert yaml.safe_load((tmp_path / "ft" / "run.yaml").read_text())["finetune"]["model"] == str(repo / "snapshots" / b)


def test_cache_miss_says_where_it_looked(tiny_model_dir, tmp_path, monkeypatch, cli):
    from bertcli.hub import resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    repo, _, _ = fake_cache(tmp_path / "cache", tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as info:
        resolve_model("google-bert/bert-base-uncased")
    msg = str(info.value)
    assert "no such checkpoint directory" in msg and str(tmp_path / "cache" / "models--google-bert--bert-base-uncased") in msg
    assert "hf download google-bert/bert-base-uncased" in msg and "HF_HUB_CACHE" in msg
    with pytest.raises(CheckpointError, match=r"not revision 'v2'.*cached: .*main.*v1"):
        resolve_model("acme/tiny-bert", "v2")
    r = cli("info", "--model", "bert-base-uncased")
    assert r.exit_code == 1 and "models--bert-base-uncased" in r.stderr and "Traceback" not in r.output
    # paths that cannot be Hub names keep the plain error
    assert resolve_model("./missing/dir/x") == Path("./missing/dir/x")


def test_pretrain_writes_curves_and_tensorboard(minilm_dir, tmp_path, cli):
    """pretrain goes through the same Trainer: curves.png with the MLM metrics, and --report-to tensorboard."""
    pytest.importorskip("tensorboard")
    import yaml

    from bertcli.curves import read_curves, read_tensorboard

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                  "max_position_embeddings": 64},
        "data": {"max_seq_length": 32, "eval_fraction": 0.1},
        "train": {"batch_size": 8, "lr": 1e-3, "log_every": 1, "eval_every": 3}}))
    out = tmp_path / "pt"
    r = cli("pretrain", corpus, "--tokenizer", minilm_dir, "--config", cfg, "--out", out, "--max-steps", 6,
            "--device", "cpu", "--precision", "fp32", "--report-to", "tensorboard", "--quiet")
    assert r.exit_code == 0, r.output
    decode_png(out / "curves.png")
    curves = read_curves(out)
    assert {"train_loss", "lr", "mlm_loss", "mlm_accuracy"} <= set(curves.series)
    assert curves.series["mlm_loss"][0] == [3, 6] and curves.best_metric == "mlm_loss"
    tb = read_tensorboard(out)
    assert [s for s, _ in tb["train/loss"]] == curves.series["train_loss"][0]
    assert [v for _, v in tb["eval/mlm_loss"]] == pytest.approx(curves.series["mlm_loss"][1], rel=1e-6)
