"""Shared bits of the strategy tests: a one-image batch and a loss-lowering optimizer step."""

from __future__ import annotations

import torch
from PIL import Image

from loupe.train.strategies.base import image_token_id


def gradient_image(size: tuple[int, int]) -> Image.Image:
    """A deterministic RGB image with structure (so crops differ)."""
    w, h = size
    x = torch.linspace(0, 255, w).view(1, w).expand(h, w)
    y = torch.linspace(255, 0, h).view(h, 1).expand(h, w)
    arr = torch.stack([x, y, (x + y) / 2], -1).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def one_image_batch(tok, strategy, image: Image.Image, boxes=None, text: str = "A red square.") -> dict:
    """``<s> <image>×N question answer </s>`` with labels on the answer only, N from the strategy."""
    iid = image_token_id(tok)
    n = strategy.image_token_count(*image.size, n_boxes=0 if boxes is None else len(boxes))
    prompt = tok("Describe this image in detail.", add_special_tokens=False)["input_ids"]
    answer = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([[tok.bos_token_id] + [iid] * n + prompt + answer])
    labels = ids.clone()
    labels[0, : ids.shape[1] - len(answer)] = -100
    px = strategy.collate([strategy.preprocess(image, boxes=boxes)])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, **px)


def one_step(model, batch: dict, lr: float = 1e-3, eval_before: bool = False) -> tuple[float, float, tuple]:
    """(loss before, loss after one AdamW step on the same batch, what the encoder returned in the
    first forward). The first loss is the train-mode loss the step descends (``eval_before``:
    measured in eval mode first, for encoders that are random in training); the second is in eval mode."""
    model.encoder.vision.requires_grad_(False)  # frozen in every stage preset, as upstream
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    seen: list = []
    hook = model.encoder.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        if eval_before:
            model.eval()
            with torch.no_grad():
                before = model(**batch).loss.item()
        model.train()
        loss = model(**batch).loss
        before = before if eval_before else loss.item()
        loss.backward()
    finally:
        hook.remove()
    opt.step()
    opt.zero_grad()
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
    return before, after, seen[0]
