"""Evaluation throughput: scorers on 1M predictions, batched vs one-at-a-time generation.

    python benchmarks/bench_eval.py [--n-preds 1000000] [--questions 64] [--batches 1,8,32] [--max-new-tokens 16] [--device cpu]

Scorers: 1M VQA predictions, each with 10 human answers drawn from a Zipf-like vocabulary of 5,000
answers written with the case, punctuation, article and number-word variations real answers have
("The Two Dogs.", "2 dogs", "two dogs", ...); timed end to end (normalise + leave-one-out score),
once with the memoised normaliser cold, once warm, and the literal upstream loop (m4c_evaluator.py)
on a 20k subset for comparison. POPE / GQA / MME / MMBench on 1M answers too.

Generation: the tiny random LLaVA (``loupe.eval.tiny``) answering ``--questions`` questions with
greedy decoding, one question per ``generate`` call vs batches; every call generates exactly
``--max-new-tokens`` tokens (the random model never emits EOS early), so the work is the same.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

NUMS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
NOUNS = "dog cat man woman car bus sign tree table plate pizza horse train clock kite bird".split()
COLORS = "red blue green white black yellow brown gray orange pink".split()


def answer_vocab(n: int, rng: random.Random) -> list[str]:
    out = ["yes", "no", "Yes", "No.", "yes!", "1,000", "U.S.A.", "isnt", "isn't"]
    while len(out) < n:
        k = rng.random()
        if k < 0.3:
            out.append(rng.choice(NUMS + [str(i) for i in range(30)]))
        elif k < 0.6:
            out.append(
                f"{rng.choice(['', 'the ', 'a ', 'The '])}{rng.choice(COLORS)} {rng.choice(NOUNS)}{rng.choice(['', 's', '.', '?'])}"
            )
        else:
            out.append(
                f"{rng.choice(NUMS)} {rng.choice(NOUNS)}s{rng.choice(['', '.'])} {rng.randint(0, 999)}"
            )
    return out


def zipf_pick(vocab: list[str], rng: random.Random) -> str:
    return vocab[min(int(rng.paretovariate(1.1)) - 1, len(vocab) - 1)]


def bench_scorers(n: int, seed: int = 0) -> list[tuple[str, int, float]]:
    from loupe.eval.scorers import (
        can_infer,
        gqa_correct,
        mme_scores,
        normalize_answer,
        pope_metrics,
        vqa_accuracy,
    )

    rng = random.Random(seed)
    vocab = answer_vocab(5000, rng)
    preds = [zipf_pick(vocab, rng) for _ in range(n)]
    gts = [[zipf_pick(vocab, rng) for _ in range(10)] for _ in range(n)]
    rows = []
    normalize_answer.cache_clear()
    t = time.process_time()
    acc = sum(vqa_accuracy(p, g) for p, g in zip(preds, gts)) / n
    rows.append(("VQA accuracy (normaliser cache cold)", n, time.process_time() - t))
    t = time.process_time()
    acc2 = sum(vqa_accuracy(p, g) for p, g in zip(preds, gts)) / n
    rows.append(("VQA accuracy (cache warm)", n, time.process_time() - t))
    assert acc == acc2
    # the literal upstream loop: normalise all 10 answers, O(10^2) leave-one-out per unique answer
    from loupe.eval.scorers.vqa import _process_digit_article, _process_punctuation

    def upstream_norm(a: str) -> str:  # no memoisation, as upstream
        a = a.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
        return _process_digit_article(_process_punctuation(a.replace("\n", " ").replace("\t", " ").strip()))

    def upstream(pred, raw):
        answers = [upstream_norm(a) for a in raw]
        gt = list(enumerate(answers))
        scores = {}
        for u in set(answers):
            accs = [min(1, len([o for o in gt if o != g and o[1] == u]) / 3) for g in gt]
            scores[u] = sum(accs) / len(accs)
        return scores.get(upstream_norm(pred), 0.0)

    m = min(n, 20000)
    t = time.process_time()
    ref = sum(upstream(p, g) for p, g in zip(preds[:m], gts[:m])) / m
    rows.append(("VQA accuracy, literal upstream loop (m4c_evaluator.py)", m, time.process_time() - t))
    ours = sum(vqa_accuracy(p, g) for p, g in zip(preds[:m], gts[:m])) / m
    assert abs(ref - ours) < 1e-12, (ref, ours)
    yn = [rng.choice(["Yes", "No", "Yes, there is a dog.", "There is not a cat."]) for _ in range(n)]
    labels = [rng.choice(["yes", "no"]) for _ in range(n)]
    t = time.process_time()
    pope_metrics(yn, labels)
    rows.append(("POPE metrics", n, time.process_time() - t))
    t = time.process_time()
    sum(gqa_correct(p, g) for p, g in zip(preds, (g[0] for g in gts)))
    rows.append(("GQA exact match", n, time.process_time() - t))
    t = time.process_time()
    mme_scores(("count", f"{i // 2}.jpg", a, "Yes") for i, a in enumerate(yn))
    rows.append(("MME acc / acc+", n, time.process_time() - t))
    choices = {"A": "red", "B": "green", "C": "blue", "D": "yellow"}
    mc = [rng.choice(["A", "B.", "The answer is C", "it is blue", "(D) yellow"]) for _ in range(n)]
    t = time.process_time()
    sum(can_infer(p, choices) == "A" for p in mc)
    rows.append(("MMBench option extraction (can_infer)", n, time.process_time() - t))
    return rows


def bench_generation(
    questions: int, batches: list[int], max_new_tokens: int, device: str | None
) -> list[tuple]:
    from PIL import Image

    from loupe.eval.model import Query, load_vlm
    from loupe.eval.tiny import make_tiny_llava

    model = load_vlm(make_tiny_llava(tempfile.mkdtemp(prefix="loupe-tiny-") + "/m"), device=device)
    rng = random.Random(0)
    qs = [
        Query.single(Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3))),
                     f"Is there a {rng.choice(NOUNS)} in the image?\nAnswer the question using a single word or phrase.")
        for _ in range(questions)
    ]  # fmt: skip
    model.answer(qs[:2], max_new_tokens)  # warm-up
    out = []
    ref = None
    for b in batches:
        t, c = time.perf_counter(), time.process_time()
        texts = []
        for i in range(0, len(qs), b):
            texts += model.answer(qs[i : i + b], max_new_tokens)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        same = ref is None or texts == ref
        ref = ref or texts
        out.append((b, questions / dt, questions / dc, same))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-preds", type=int, default=1_000_000)
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", nargs="*", default=["scorers", "generation"])
    a = ap.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus\n")
    if "scorers" in a.only:
        print("| scorer | predictions | CPU seconds | predictions per CPU-second |\n|---|---|---|---|")
        for name, n, s in bench_scorers(a.n_preds):
            print(f"| {name} | {n:,} | {s:.2f} | {n / s:,.0f} |")
        print()
    if "generation" in a.only:
        import torch

        rows = bench_generation(
            a.questions, [int(x) for x in a.batches.split(",")], a.max_new_tokens, a.device
        )
        print(
            f"torch {torch.__version__}, threads {torch.get_num_threads()}, {a.questions} questions, {a.max_new_tokens} new tokens each\n"
        )
        print(
            "| batch size | questions/s (wall) | questions per CPU-second | vs one at a time (CPU) | same answers as batch 1 |"
        )
        print("|---|---|---|---|---|")
        base = rows[0][2]
        for b, qps, qpc, same in rows:
            print(f"| {b} | {qps:.2f} | {qpc:.2f} | {qpc / base:.2f}x | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
