"""Samples -> tokenised training examples (a torch ``Dataset``) and the batch collator.

Every sample is rendered with the chat template and tokenised once, up front: a sample that
cannot be trained on (see :class:`~loupe.train.templates.SkipSample`) is skipped and counted, so
the counts in the log are exact and every rank of a DDP run sees the same list. Images are
decoded and preprocessed by the strategy lazily in ``__getitem__`` (DataLoader workers).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from PIL import Image

from loupe.train.sources import Sample, SampleSet
from loupe.train.strategies.base import Strategy
from loupe.train.templates import IGNORE, ChatTemplate, SkipSample, encode, render


class TrainDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        samples: SampleSet,
        tokenizer: Any,
        strategy: Strategy,
        template: ChatTemplate,
        max_length: int,
        learn: str = "assistant",
        system: str | None = None,
        use_boxes: bool = False,
    ):
        self.strategy = strategy
        self.use_boxes = use_boxes
        self.skipped: Counter = Counter(samples.skipped)
        self.examples: dict[str, str] = dict(samples.examples)
        self.items: list[tuple[Sample, list[int], list[int]]] = []
        for s in samples.samples:
            try:
                segs = render(
                    template,
                    s.turns,
                    s.image is not None,
                    tokenizer.bos_token or "",
                    tokenizer.eos_token or "",
                    system,
                )
                n_img = 0
                if s.image is not None:
                    n_boxes = len(s.boxes or []) if use_boxes else 0
                    n_img = strategy.image_token_count(s.size[0], s.size[1], n_boxes=n_boxes)
                enc = encode(segs, tokenizer, n_img, max_length, learn)
            except SkipSample as e:
                self.skipped[e.reason] += 1
                self.examples.setdefault(e.reason, f"{s.uid}: {e}")
                continue
            self.items.append((s, enc.input_ids, enc.labels))
        self.text_tokens = sum(len(ids) for _, ids, _ in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, ids, labels = self.items[i]
        out: dict[str, Any] = {"input_ids": ids, "labels": labels, "image": None}
        if s.image is not None:
            try:
                with Image.open(s.image) as im:
                    image = im.convert("RGB")
            except OSError as e:
                raise ValueError(f"sample {s.uid}: cannot decode image {s.image}: {e}") from None
            question = next((t["value"] for t in s.turns if t["from"] == "human"), None)
            boxes = torch.tensor(s.boxes, dtype=torch.float32).reshape(-1, 4) if self.use_boxes else None
            out["image"] = self.strategy.preprocess(image, boxes=boxes, question=question)
        return out


class Collator:
    """Right-pads ``input_ids`` (pad id) and ``labels`` (-100), builds ``attention_mask`` and lets the
    strategy batch the image tensors of the samples that have one."""

    def __init__(self, pad_token_id: int, strategy: Strategy):
        self.pad = pad_token_id
        self.strategy = strategy

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            mask[i, :k] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        images = [f["image"] for f in features if f["image"] is not None]
        if images:
            batch.update(self.strategy.collate(images))
        return batch
