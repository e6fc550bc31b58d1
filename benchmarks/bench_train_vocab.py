"""Benchmark: bertcli.vocab.train_vocab against tokenizers' BertWordPieceTokenizer.train.

Both train a WordPiece vocabulary with the same settings on the same decoded text: all of
../shared/data/corpus read with --encoding auto (UTF-8, else cp1252 per file). The reference gets
that text as UTF-8 copies of the files (tokenizers' own Rust file reader); bertcli reads the
original files itself, holds out 2% of lines, trains from an iterator, writes and self-checks the
output and measures the held-out sample. Repetitions are interleaved (the machine is shared).

    python benchmarks/bench_train_vocab.py [--corpus DIR] [--reps 3] [--vocab-size 30522]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tokenizers import BertWordPieceTokenizer

from bertcli.data.text import expand_paths, read_text
from bertcli.tokenizer import SPECIAL_TOKENS
from bertcli.vocab import train_vocab

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "corpus"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=30522)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-vocab-"))
    utf8 = work / "utf8"
    files = expand_paths([args.corpus])
    for i, f in enumerate(files):
        (utf8 / f"{i:03d}-{f.name}").parent.mkdir(parents=True, exist_ok=True)
        (utf8 / f"{i:03d}-{f.name}").write_text(read_text(f, "auto").text, encoding="utf-8")
    utf8_files = sorted(str(p) for p in utf8.iterdir())
    size_mb = sum(f.stat().st_size for f in files) / 1e6

    ours, ref, stats, ref_vocabs, our_vocabs = [], [], None, [], []
    for rep in range(args.reps):
        t = time.perf_counter()
        stats = train_vocab([args.corpus], work / f"ours-{rep}", vocab_size=args.vocab_size, encoding="auto")
        ours.append(time.perf_counter() - t)
        our_vocabs.append((work / f"ours-{rep}" / "vocab.txt").read_text(encoding="utf-8").splitlines())

        t = time.perf_counter()
        bwp = BertWordPieceTokenizer(lowercase=True)
        bwp.train(utf8_files, vocab_size=args.vocab_size, min_frequency=2, limit_alphabet=1000,
                  special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        (work / f"ref-{rep}").mkdir()
        bwp.save_model(str(work / f"ref-{rep}"))
        ref.append(time.perf_counter() - t)
        ref_vocabs.append((work / f"ref-{rep}" / "vocab.txt").read_text(encoding="utf-8").splitlines())
        print(f"rep {rep}: bertcli {ours[-1]:.2f} s, tokenizers {ref[-1]:.2f} s", flush=True)

    mo, mr = statistics.median(ours), statistics.median(ref)
    a, b = set(our_vocabs[0]), set(ref_vocabs[0])
    print()
    print(f"corpus: {len(files)} files, {size_mb:.1f} MB, {len(stats['fallback_files'])} read as cp1252; "
          f"vocab size {args.vocab_size}, min frequency 2, limit alphabet 1000, lowercase; {args.reps} "
          f"interleaved repetitions, medians")
    print()
    print("| | bertcli train_vocab | tokenizers BertWordPieceTokenizer.train | ratio |")
    print("|---|---|---|---|")
    print(f"| time (s), median | {mo:.2f} | {mr:.2f} | {mo / mr:.2f} |")
    print(f"| time (s), all | {', '.join(f'{x:.2f}' for x in ours)} | {', '.join(f'{x:.2f}' for x in ref)} | |")
    t = stats["time_s"]
    print(f"| bertcli stages (last rep) | read {t['read']:.2f}, train {t['train']:.2f}, write+check "
          f"{t['write_check']:.2f}, held-out stats {t['stats']:.2f} | | |")
    print()
    print(f"vocabulary: {stats['vocab_size']} tokens; held-out ({stats['held_out']['lines']} lines, "
          f"{stats['held_out']['words']} words): unknown-token rate {stats['unk_rate']:.4%}, "
          f"wordpieces per word {stats['wordpieces_per_word']:.3f}")
    print(f"overlap with the reference vocabulary (trained on all lines, not 98%): "
          f"{len(a & b) / len(a | b):.3f} Jaccard")
    same_ours = all(v == our_vocabs[0] for v in our_vocabs)
    same_ref = all(v == ref_vocabs[0] for v in ref_vocabs)
    sets_ours = all(set(v) == a for v in our_vocabs)
    print(f"identical vocab.txt across repetitions: bertcli {same_ours} (same token set {sets_ours}), "
          f"tokenizers {same_ref}")


if __name__ == "__main__":
    main()
