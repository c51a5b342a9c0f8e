"""The densefusion-like recipe, old code vs new code, side by side in one run (issue 19's last must-show).

    .venv/bin/python benchmarks/bench_densefusion_side.py --images 1000 --repeats 2 --json side.json

What it does:

1. Writes ``--images`` input images (seeded, so every run gets the same bytes): photos (the bundled
   demo photos, cropped, flipped, colour-jittered and re-encoded at 384-1024 px short sides), photos
   with a drawn sign of 1-3 words, drawn document pages (some downscaled: 8-18 px text), the demo's
   drawn signs and photographed page, and ~8 % near-duplicate re-encodes. Every image with text has
   its words as a label (``labels.json``); the photos are labelled text-free.
2. Checks out ``--old`` (default: the commit just before issue 19's throughput work) and ``--new``
   (default ``HEAD``) with ``git worktree add --detach`` into a temp dir, and gives each tree a venv
   whose ``.pth`` points at the site-packages this script runs with (torch, rapidocr, the
   EfficientNet wheels, ...) and ``pip install --no-deps --no-build-isolation -e`` of the tree, as
   ``/work/mkwt.sh`` does. Both worktrees are removed at the end (``--keep`` keeps them).
3. Runs the SAME recipe -- embed -> SemDeDup -> select -> tags -> OCR -> template (composer)
   captions -> export, packaged models only, no network -- with each tree's ``loupe run``, interleaved
   (old, new, old, new, ...) after one untimed warm-up run of each on 8 images. Only fields both
   revisions accept are set; everything else (OCR ``det_min_side``, ``preprocess``, worker threads,
   the evidence join, tags from stored embeddings) is each revision's default: "today" vs now.
4. Per run: wall seconds, CPU seconds and peak RSS of the ``loupe run`` process tree (``os.wait4``
   of that child: user + sys of it and the children it waited for), load average at start and end,
   per-stage seconds from the run's ``manifest.json``, and OCR word recall read from the run's own
   tables (duckdb over ``samples``/``drops``/``experts/ocr``): found / labelled words, multiset match,
   on the labelled images that reached OCR. Recall is also given on the labelled images that
   reached OCR in *every* run (the common set), which is the "at equal recall" comparison.

Prints a table per run, per-stage means and the old/new ratios of wall and CPU time; ``--json``
writes everything. The recipe sets ``select.per_cluster`` to the image count by default, so select
runs but keeps every SemDeDup survivor: the old select made its own k-means while the new one reuses
SemDeDup's clusters (a change of semantics, not of speed), and keeping all makes both revisions OCR
the same images. ``--per-cluster K`` makes it bite (the OCR image counts in the table then show
whether the work stayed equal).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_experts import PAGE_TEXT, SIGNS, words  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo_images"
# Parent of f3cdd45 ("evidence: join once per stage ... (issue 19)"), the first of issue 19's
# throughput commits (then d06675a tags from stored embeddings, fe0d82e one-thread workers and
# preprocess fast|exact, 6f186ab det_min_side 320); `git log --oneline` on main.
OLD_REV = "b7ddf78c4a0a9466965f5064653f0a81c87a9f61"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "YOLO_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "RAY_AUTH_MODE": "disabled",
}
PHOTO_SKIP = {"broken_upload.jpg", "chelsea_copy.jpg", "coffee_again.jpg", "logo.jpg"}  # copies, text
VOCAB = """apple river market garden silver planet coffee yellow morning station museum bridge window
orange castle forest summer winter autumn spring harbor island mountain valley desert ocean village
city street avenue square park library school theater cinema bakery pharmacy hotel airport train
ticket open closed sale price total euros dollars welcome exit entrance parking north south east west
fresh bread cheese pizza pasta salad soup tea juice water milk sugar honey lemon cherry grape melon
blue green red black white golden purple happy quiet rapid gentle bright modern classic royal
central public private daily weekly special limited free new old best first second third hours
monday friday sunday january march june october december 2024 2025 2026 12 24 42 99 100 365""".split()


# ----------------------------------------------------------------------------------- inputs
def fonts() -> list[str]:
    roots = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation")]
    found = sorted(str(p) for r in roots if r.is_dir() for p in r.glob("*.ttf") if "Mono" not in p.name)
    return [f for f in found if "ExtraLight" not in f and "Italic" not in f and "Oblique" not in f]


def font(faces: list[str], rng: random.Random, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(rng.choice(faces), size) if faces else ImageFont.load_default(size=size)


def photo(base: Image.Image, rng: random.Random) -> Image.Image:
    """A LAION-like variant of a demo photo: crop, flip, jitter, resized to a 384-1024 px short side."""
    w, h = base.size
    cw, ch = int(w * rng.uniform(0.55, 1.0)), int(h * rng.uniform(0.55, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = base.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    short = rng.choice([384, 448, 512, 640, 768, 1024])
    s = short / min(img.size)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BICUBIC)


def draw_sign(img: Image.Image, faces: list[str], rng: random.Random) -> list[str]:
    """Draw 1-3 words on a filled box somewhere inside ``img``; returns the words drawn."""
    d = ImageDraw.Draw(img)
    size = rng.randint(max(14, img.height // 24), max(20, img.height // 9))
    while True:
        text = " ".join(rng.sample(VOCAB, rng.randint(1, 3)))
        text = text.upper() if rng.random() < 0.5 else text
        f = font(faces, rng, size)
        x0, y0, x1, y1 = d.textbbox((0, 0), text, font=f)
        if x1 - x0 + 2 * size < img.width or size < 12:
            break
        size = int(size * 0.8)
    pad = size // 2
    bw, bh = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    x, y = rng.randint(0, max(0, img.width - bw)), rng.randint(0, max(0, img.height - bh))
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    fg = (255, 255, 255) if sum(bg) < 380 else (0, 0, 0)
    d.rectangle((x, y, x + bw, y + bh), fill=bg)
    d.text((x + pad - x0, y + pad - y0), text, fill=fg, font=f)
    return words(text)


def page(faces: list[str], rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A document/screenshot: 3-8 lines of 2-6 words on a light background; a third downscaled 2x."""
    w, h = rng.choice([(640, 360), (800, 600), (1024, 768), (480, 640), (1280, 720)])
    img = Image.new("RGB", (w, h), tuple(rng.randint(215, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    size = rng.randint(18, 36)
    f = font(faces, rng, size)
    got: list[str] = []
    y = rng.randint(10, 40)
    for _ in range(rng.randint(3, 8)):
        line = " ".join(rng.sample(VOCAB, rng.randint(2, 6)))
        while d.textlength(line, font=f) > w - 40 and " " in line:
            line = line.rsplit(" ", 1)[0]
        if y + size * 1.6 > h:
            break
        d.text((20, y), line, fill=tuple(rng.randint(0, 70) for _ in range(3)), font=f)
        got += words(line)
        y += int(size * rng.uniform(1.5, 2.2))
    if rng.random() < 1 / 3:
        img = img.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
    return img, got


def encode(img: Image.Image, rng: random.Random, png: bool = False) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if png:
        img.save(buf, "PNG")
        return buf.getvalue(), ".png"
    img.convert("RGB").save(buf, "JPEG", quality=rng.randint(75, 95))
    return buf.getvalue(), ".jpg"


def make_inputs(folder: Path, n: int, seed: int) -> dict[str, list[str]]:
    """Write ``n`` images (+ alt-text sidecars for the photos) to ``folder``; return the labels:
    file name -> words drawn on it ([] = text-free photo)."""
    rng = random.Random(seed)
    faces = fonts()
    bases = {
        p.stem: Image.open(p).convert("RGB") for p in sorted(DEMO.glob("*.jpg")) if p.name not in PHOTO_SKIP
    }
    texts = {k: words(v) for k, v in SIGNS.items()} | {"page.png": words(PAGE_TEXT)}
    folder.mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[str]] = {}
    made: list[tuple[Image.Image, list[str], str | None]] = []
    for i in range(n):
        r = rng.random()
        alt = None
        if r < 0.08 and made:  # near duplicate: an earlier image re-encoded, slightly resized
            src, lab, alt = made[rng.randrange(len(made))]
            s = rng.uniform(0.9, 1.0)
            img = src.resize(
                (max(1, int(src.width * s)), max(1, int(src.height * s))), Image.Resampling.BICUBIC
            )
        elif r < 0.55:
            stem = rng.choice(sorted(bases))
            img, lab = photo(bases[stem], rng), []
            side = DEMO / f"{stem}.txt"
            alt = side.read_text().strip() if side.is_file() else None
        elif r < 0.70:
            stem = rng.choice(sorted(bases))
            img = photo(bases[stem], rng)
            lab = draw_sign(img, faces, rng)
        elif r < 0.94:
            img, lab = page(faces, rng)
        else:
            name = rng.choice(sorted(texts))
            src = Image.open(DEMO / name).convert("RGB")
            s = rng.uniform(0.8, 1.6)
            img, lab = (
                src.resize((int(src.width * s), int(src.height * s)), Image.Resampling.LANCZOS),
                texts[name],
            )
        data, ext = encode(img, rng, png=bool(lab) and rng.random() < 0.3)
        name = f"img_{i:05d}{ext}"
        (folder / name).write_bytes(data)
        if alt:
            (folder / name).with_suffix(".txt").write_text(alt + "\n")
        labels[name] = lab
        made.append((img, lab, alt))
    return labels


def recipe(images: Path, n: int, per_cluster: int | None, epsilon: float) -> str:
    """The densefusion-like recipe in fields both revisions accept (checked by running it on both)."""
    k = max(2, n // 50)
    return f"""\
name: densefusion_side
description: embed -> SemDeDup -> select -> tags -> OCR -> template captions -> export (issue 19)
sources:
  - type: local_folder
    name: side
    path: {images}
stages:
  - stage: embed
    backend: efficientnet_lite0
  - stage: semdedup
    n_clusters: {k}
    epsilon: {epsilon}
    kmeans_iters: 20
    seed: 1234
  - stage: select
    n_clusters: {k}
    per_cluster: {per_cluster or n}
    score: centroid_similarity
    seed: 1234
  - stage: tag
    backend: efficientnet_lite0
    top_k: 5
  - stage: ocr
    backend: rapidocr
    min_score: 0.5
  - stage: caption
    backend: composer
  - stage: export
    formats: [llama3_jsonl, llava_json, dragonfly_parquet]
"""


# ------------------------------------------------------------------------------ revisions
def heavy_site_packages() -> Path:
    """The site-packages holding torch/duckdb/rapidocr (the main venv's), whatever venv runs us."""
    spec = importlib.util.find_spec("duckdb")
    assert spec and spec.origin, "duckdb is not importable"
    return Path(spec.origin).parents[1]


def sh(*cmd: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def checkout(rev: str, tree: Path, site: Path) -> str:
    """Worktree of ``rev`` at ``tree`` with a light venv importing ``loupe.*`` from it; returns its sha."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    sh("git", "-C", REPO, "worktree", "add", "-q", "--detach", tree, sha)
    venv = tree / ".venv"
    sh(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    pure = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(pure, "zz_main_venv.pth").write_text(f"{site}\n")
    sh(py, "-m", "pip", "uninstall", "-q", "-y", "setuptools")  # too old for pyproject's license string
    sh(py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", tree)
    sh(py, "-m", "compileall", "-q", *(tree / d for d in ("schemas", "pipeline", "experts", "recipes")))
    sh(py, "-c", "import loupe.pipeline, sys; assert loupe.pipeline.__file__.startswith(sys.argv[1])", tree)
    return sha


def run_loupe(tree: Path, recipe_file: Path, out: Path, limit: int | None = None) -> dict:
    """One ``loupe run`` of ``tree``: wall, CPU (user+sys of the process tree), peak RSS, load."""
    cmd = [str(tree / ".venv" / "bin" / "loupe"), "run", str(recipe_file), "--output", str(out), "-q"]
    if limit:
        cmd += ["--limit", str(limit)]
    env = os.environ | OFFLINE_ENV
    env.pop("PYTHONPATH", None)
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tree)
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(
            f"loupe run failed ({tree.name}, exit {proc.returncode}); log: {log}\n{log.read_text()[-3000:]}"
        )
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
        "load_start": round(load0[0], 2),
        "load_end": round(os.getloadavg()[0], 2),
    }


def run_dir(out: Path) -> Path:
    found = [m.parent for m in out.glob("*/*/manifest.json")]
    if len(found) != 1:
        raise SystemExit(f"expected one run dir under {out}, found {found}")
    return found[0]


def read_run(rd: Path) -> dict:
    """Per-stage seconds/rows from manifest.json and the OCR lines per input file, via duckdb."""
    import duckdb

    stages = json.loads((rd / "manifest.json").read_text()).get("stages", {})
    con = duckdb.connect()

    def tbl(d: str) -> str:
        return f"read_parquet('{rd / d}/**/*.parquet', union_by_name=true)"

    dropped_before_ocr = (
        f"SELECT uid FROM {tbl('drops')} WHERE stage NOT IN ('ocr', 'caption', 'export')"
        if any((rd / "drops").rglob("*.parquet"))
        else "SELECT NULL AS uid WHERE false"
    )
    reached = {
        r[0]
        for r in con.execute(
            f"SELECT source_id FROM {tbl('samples')} WHERE uid NOT IN ({dropped_before_ocr})"
        ).fetchall()
    }
    lines: dict[str, list[str]] = {}
    if any((rd / "experts" / "ocr").rglob("*.parquet")):
        q = f"SELECT s.source_id, o.text FROM {tbl('samples')} s JOIN {tbl('experts/ocr')} o USING (uid) ORDER BY 1, o.line"
        for sid, text in con.execute(q).fetchall():
            lines.setdefault(sid, []).append(text)
    exported = 0
    jl = rd / "export" / "conversations.jsonl"
    if jl.is_file():
        exported = sum(1 for _ in jl.open())
    return {
        "stages": {k: round(v.get("seconds", 0.0), 2) for k, v in stages.items()},
        "reached_ocr": sorted(reached),
        "ocr_lines": lines,
        "exported": exported,
    }


def recall(labels: dict[str, list[str]], lines: dict[str, list[str]], files: set[str]) -> tuple[int, int]:
    """(labelled words read, labelled words) over the text images in ``files``; multiset match."""
    from collections import Counter

    found = total = 0
    for f in files:
        want = Counter(labels.get(f) or [])
        got = Counter(w for t in lines.get(f, []) for w in words(t))
        found += sum(min(c, got[w]) for w, c in want.items())
        total += sum(want.values())
    return found, total


# ---------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="input images (default 1000)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per revision, interleaved (default 2)")
    ap.add_argument("--old", default=OLD_REV, help="old revision (default: the commit before issue 19)")
    ap.add_argument("--new", default="HEAD", help="new revision (default HEAD)")
    ap.add_argument("--seed", type=int, default=0, help="input image seed (default 0)")
    ap.add_argument(
        "--epsilon", type=float, default=0.02, help="SemDeDup epsilon (cosine > 0.98: copies, close crops)"
    )
    ap.add_argument("--per-cluster", type=int, default=None, help="select.per_cluster (default: keep all)")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the scratch dir (default: $TMPDIR); needs ~1 GB at 1000 images",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every measurement here")
    ap.add_argument("--keep", action="store_true", help="keep worktrees, venvs and run dirs")
    a = ap.parse_args()

    if a.workdir:
        a.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="loupe-side-", dir=a.workdir))
    trees = {"old": work / "tree-old", "new": work / "tree-new"}
    print(f"scratch: {work}{' (kept)' if a.keep else ''}")
    try:
        t0 = time.perf_counter()
        labels = make_inputs(work / "images", a.images, a.seed)
        (work / "labels.json").write_text(json.dumps(labels))
        n_text = sum(1 for v in labels.values() if v)
        print(
            f"inputs: {a.images} images ({n_text} with {sum(len(v) for v in labels.values())} labelled words) "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        recipe_file = work / "densefusion_side.yaml"
        recipe_file.write_text(recipe(work / "images", a.images, a.per_cluster, a.epsilon))
        site = heavy_site_packages()
        shas = {}
        for name, rev in (("old", a.old), ("new", a.new)):
            t0 = time.perf_counter()
            shas[name] = checkout(rev, trees[name], site)
            print(f"{name}: {rev} = {shas[name][:12]}, env in {time.perf_counter() - t0:.0f} s")
        for name, tree in trees.items():  # untimed: first imports, page cache, the models' files
            run_loupe(tree, recipe_file, work / "runs" / f"warmup-{name}", limit=8)
        runs: list[dict] = []
        for rep in range(a.repeats):
            for name, tree in trees.items():
                out = work / "runs" / f"{name}-{rep}"
                m = run_loupe(tree, recipe_file, out)
                m |= {"rev": name, "repeat": rep} | read_run(run_dir(out))
                runs.append(m)
                print(
                    f"  {name} #{rep}: wall {m['wall_s']:.1f} s, CPU {m['cpu_s']:.1f} s, "
                    f"load {m['load_start']:.1f}->{m['load_end']:.1f}",
                    flush=True,
                )
                if not a.keep:
                    shutil.rmtree(out)
        report(a, labels, runs, shas)
    finally:
        if not a.keep:
            for tree in trees.values():
                if tree.exists():
                    subprocess.run(
                        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                        check=False,
                        stdout=subprocess.DEVNULL,
                    )
            shutil.rmtree(work, ignore_errors=True)


def report(a: argparse.Namespace, labels: dict[str, list[str]], runs: list[dict], shas: dict) -> None:
    text_files = {f for f, v in labels.items() if v}
    common = set.intersection(*(set(r["reached_ocr"]) for r in runs)) & text_files
    for r in runs:
        own = set(r["reached_ocr"]) & text_files
        r["recall_own"] = recall(labels, r["ocr_lines"], own)
        r["recall_common"] = recall(labels, r["ocr_lines"], common)
        free = set(r["reached_ocr"]) - text_files
        r["words_on_text_free"] = sum(len(words(t)) for f in free for t in r["ocr_lines"].get(f, []))
    print(
        f"\nmachine: {len(os.sched_getaffinity(0))} CPUs, Python {sysconfig.get_python_version()}; "
        f"old {shas['old'][:7]}, new {shas['new'][:7]}; {a.images} images\n"
    )
    print(
        "| run | wall s | CPU s | peak RSS MB | load start / end | images at OCR | exported "
        "| word recall (own) | recall (common set) | words on text-free photos |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        (fo, to), (fc, tc) = r["recall_own"], r["recall_common"]
        print(
            f"| {r['rev']} #{r['repeat']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} "
            f"| {r['load_start']:.1f} / {r['load_end']:.1f} | {len(r['reached_ocr'])} | {r['exported']} "
            f"| {fo}/{to} = {fo / max(to, 1):.3f} | {fc}/{tc} = {fc / max(tc, 1):.3f} | {r['words_on_text_free']} |"
        )
    by = {k: [r for r in runs if r["rev"] == k] for k in ("old", "new")}
    stages = list(dict.fromkeys(s for r in runs for s in r["stages"]))
    print("\n| stage (mean s, manifest) | old | new | old / new |\n|---|---|---|---|")
    for s in stages:
        o, n = (statistics.mean(r["stages"].get(s, 0.0) for r in by[k]) for k in ("old", "new"))
        print(f"| {s} | {o:.1f} | {n:.1f} | {o / n if n else float('nan'):.2f}x |")
    summary = {}
    for key in ("wall_s", "cpu_s"):
        o, n = (statistics.median(r[key] for r in by[k]) for k in ("old", "new"))
        bo, bn = (min(r[key] for r in by[k]) for k in ("old", "new"))
        summary[key] = {"old_median": o, "new_median": n, "ratio_median": o / n, "ratio_best": bo / bn}
    rc = {k: by[k][0]["recall_common"] for k in by}
    summary["recall_common"] = {k: v[0] / max(v[1], 1) for k, v in rc.items()}
    summary["common_set_images"] = len(common)
    w, c = summary["wall_s"], summary["cpu_s"]
    print(
        f"\nold / new: wall {w['ratio_median']:.2f}x (medians {w['old_median']:.1f} / {w['new_median']:.1f} s; "
        f"best {w['ratio_best']:.2f}x), CPU {c['ratio_median']:.2f}x (best {c['ratio_best']:.2f}x)"
    )
    ro, rn = summary["recall_common"]["old"], summary["recall_common"]["new"]
    print(
        f"word recall on the {len(common)} labelled images every run OCR'd: old {ro:.3f}, new {rn:.3f}; "
        f"goal wall >= 1.3x: {'met' if w['ratio_median'] >= 1.3 else 'NOT met'}, "
        f"recall new >= old: {'yes' if rn >= ro else 'NO'}"
    )
    if a.json:
        for r in runs:
            r.pop("ocr_lines")
        a.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(a).items()},
                    "shas": shas,
                    "summary": summary,
                    "runs": runs,
                },
                indent=1,
            )
        )
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
