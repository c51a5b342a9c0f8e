"""A tiny vision-language model for the CPU replication: one ViT, one causal LM, three ways to look.

This is the replication's *own* small trainer (``train.backend: tiny``), written because the bundled
trainer (``loupe train``, issue 12) was not on main when the loop was built; it keeps the *shape* of
the seeds' strategies at a scale that trains in a minute on a CPU core. ``R`` is the base (crop)
resolution, ``g = R / patch`` the patch grid:

* ``llava`` (LLaVA-1.5, ``llava/model/llava_arch.py`` ``encode_images`` + ``mlp2x_gelu``): the whole
  image resized to R x R; the ViT's patch tokens, CLS dropped -> g^2 visual tokens.
* ``s2`` (S2-Wrapper, ``s2wrapper/core.py`` ``forward``): the image at R, 2R and 3R, each cut into
  R x R tiles, tile features stitched back and area-pooled to g x g, the scales concatenated on the
  channel axis (3 x width) -> still g^2 tokens.
* ``dragonfly`` (Dragonfly, ``dragonfly/models/modeling_dragonfly.py``; the seed README): a low-res
  view (R: CLS + g^2), a mid-res view (2R, 2 x 2 crops) and a high-res view (6R, 6 x 6 crops); every
  crop is CLS + its g x g grid average-pooled 4 x 4 (24 x 24 -> 6 x 6 upstream, 8 x 8 -> 2 x 2 here),
  and a learned newline embedding follows each view: (1 + g^2) + 40 (1 + (g/4)^2) + 3 tokens.

The LM reads ``[visual tokens] [question chars] <sep> [answer chars] <eos>`` under one causal mask;
only the answer and its end token carry labels (LLaVA's masking). Characters are the tokens: the
vocabulary is fixed (printable ASCII), so no tokenizer has to be trained or downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = ["<pad>", "<sep>", "<eos>", "<unk>"] + [chr(c) for c in range(32, 127)]
PAD, SEP, EOS, UNK = 0, 1, 2, 3
CHAR = {c: i for i, c in enumerate(VOCAB)}
STRATEGIES = ("llava", "s2", "dragonfly")


def encode_text(s: str) -> list[int]:
    return [CHAR.get(c, UNK) for c in s]


def decode_text(ids: list[int]) -> str:
    out = []
    for i in ids:
        if i == EOS:
            break
        if i >= 4:
            out.append(VOCAB[i])
    return "".join(out)


@dataclass
class TinyConfig:
    strategy: str = "llava"
    base: int = 64  # R: crop resolution seen by the ViT
    patch: int = 8
    vit_width: int = 64
    vit_layers: int = 2
    lm_width: int = 128
    lm_layers: int = 2
    heads: int = 4
    max_text: int = 64  # question + answer characters


def visual_tokens(cfg: TinyConfig) -> int:
    """Visual token count of a strategy (the arithmetic the module docstring states)."""
    g = cfg.base // cfg.patch
    if cfg.strategy in ("llava", "s2"):
        return g * g
    if cfg.strategy == "dragonfly":
        return (1 + g * g) + (4 + 36) * (1 + (g // 4) ** 2) + 3
    raise ValueError(f"strategy {cfg.strategy!r}; valid: {', '.join(STRATEGIES)}")


def crops(x: torch.Tensor, size: int, n: int) -> torch.Tensor:
    """Resize a batch (B, 3, H, W) to n*size square and cut it into n x n crops: (B * n^2, 3, size, size)."""
    x = resize(x, n * size)
    b = x.shape[0]
    x = x.reshape(b, 3, n, size, n, size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * n * n, 3, size, size)


def resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


class TinyViT(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        g = cfg.base // cfg.patch
        self.embed = nn.Conv2d(3, cfg.vit_width, cfg.patch, cfg.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.vit_width))
        self.pos = nn.Parameter(torch.randn(1, 1 + g * g, cfg.vit_width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.vit_width, cfg.heads, 2 * cfg.vit_width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.vit_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.vit_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) in [0, 1] -> (N, 1 + g^2, width): CLS then the patch grid row-major."""
        p = self.embed(x * 2 - 1).flatten(2).transpose(1, 2)
        p = torch.cat([self.cls.expand(p.shape[0], -1, -1), p], dim=1) + self.pos
        return self.norm(self.blocks(p))


def pool_grid(t: torch.Tensor, g: int, out: int) -> torch.Tensor:
    """Average-pool the patch grid (N, g^2, C) to (N, out^2, C)."""
    n, _, c = t.shape
    grid = t.transpose(1, 2).reshape(n, c, g, g)
    return F.adaptive_avg_pool2d(grid, out).flatten(2).transpose(1, 2)


class TinyVLM(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"strategy {cfg.strategy!r}; valid: {', '.join(STRATEGIES)}")
        self.cfg = cfg
        self.vit = TinyViT(cfg)
        in_width = cfg.vit_width * (3 if cfg.strategy == "s2" else 1)
        # LLaVA-1.5's mlp2x_gelu projector
        self.proj = nn.Sequential(
            nn.Linear(in_width, cfg.lm_width), nn.GELU(), nn.Linear(cfg.lm_width, cfg.lm_width)
        )
        self.newline = nn.Parameter(torch.zeros(cfg.lm_width))
        n_pos = visual_tokens(cfg) + cfg.max_text + 2
        self.tok = nn.Embedding(len(VOCAB), cfg.lm_width)
        self.pos = nn.Parameter(torch.randn(1, n_pos, cfg.lm_width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.lm_width, cfg.heads, 4 * cfg.lm_width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.lm = nn.TransformerEncoder(layer, cfg.lm_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.lm_width)
        self.head = nn.Linear(cfg.lm_width, len(VOCAB), bias=False)

    # ------------------------------------------------------------------ vision
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, visual_tokens, lm_width)."""
        cfg, b = self.cfg, x.shape[0]
        r, g = cfg.base, cfg.base // cfg.patch
        if cfg.strategy == "llava":
            return self.proj(self.vit(resize(x, r))[:, 1:])
        if cfg.strategy == "s2":
            scales = []
            for n in (1, 2, 3):
                f = self.vit(crops(x, r, n))[:, 1:]  # (B n^2, g^2, C)
                c = f.shape[-1]
                f = f.reshape(b, n, n, g, g, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, n * g, n * g)
                scales.append(F.adaptive_avg_pool2d(f, g).flatten(2).transpose(1, 2))
            return self.proj(torch.cat(scales, dim=-1))
        nl = self.newline.expand(b, 1, -1)
        low = self.proj(self.vit(resize(x, r)))  # CLS + g^2
        views = [low, nl]
        for n in (2, 6):
            f = self.vit(crops(x, r, n))
            f = torch.cat([f[:, :1], pool_grid(f[:, 1:], g, max(1, g // 4))], dim=1)
            views += [self.proj(f).reshape(b, -1, cfg.lm_width), nl]
        return torch.cat(views, dim=1)

    # ------------------------------------------------------------------ language
    def logits(self, vis: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = torch.cat([vis, self.tok(ids)], dim=1)
        h = h + self.pos[:, : h.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(h.shape[1], device=h.device)
        return self.head(self.norm(self.lm(h, mask=mask, is_causal=True)))

    def forward(self, images: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token loss on the text positions whose label is not -100."""
        vis = self.encode_images(images)
        logits = self.logits(vis, ids)[:, vis.shape[1] - 1 : -1]  # the position before each text token
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompts: list[list[int]], max_new_tokens: int = 8) -> list[str]:
        """Greedy answers. The vision tower runs once per image; prompts of one length decode as a batch."""
        vis = self.encode_images(images)
        outs: list[str] = [""] * len(prompts)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for idx in by_len.values():
            ids = torch.tensor([prompts[i] for i in idx])
            v = vis[idx]
            finished = torch.zeros(len(idx), dtype=torch.bool)
            new = []
            for _ in range(max_new_tokens):
                nxt = self.logits(v, ids)[:, -1].argmax(-1)
                nxt = torch.where(finished, torch.full_like(nxt, EOS), nxt)
                new.append(nxt)
                finished |= nxt == EOS
                if bool(finished.all()):
                    break
                ids = torch.cat([ids, nxt[:, None]], dim=1)
            gen = torch.stack(new, dim=1).tolist()
            for k, i in enumerate(idx):
                outs[i] = decode_text(gen[k])
        return outs


def make_batch(questions: list[str], answers: list[str], max_text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``question <sep> answer <eos>`` ids, right-padded; labels only on the answer and <eos>."""
    rows, labs = [], []
    for q, a in zip(questions, answers):
        qa = encode_text(q)[: max(0, max_text - len(a) - 2)] + [SEP]
        ans = encode_text(a) + [EOS]
        rows.append(qa + ans)
        labs.append([-100] * len(qa) + ans)
    n = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (n - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (n - len(r)) for r in labs])
    return ids, labels


def prompt_ids(question: str, max_text: int) -> list[int]:
    return encode_text(question)[: max_text - 8] + [SEP]


def cosine_lr(step: int, total: int, warmup: float = 0.03) -> float:
    """Linear warmup over ``warmup`` of the steps, then cosine to 0 (LLaVA's schedule)."""
    w = max(1, math.ceil(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))
