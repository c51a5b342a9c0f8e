"""The deterministic captioner: writes a perceptual-fusion paragraph from the evidence alone.

No model, no randomness: the same evidence always gives the same caption, and every statement in
it comes from an expert or the alt-text (so it never hallucinates). Use it offline, in tests, and
as the faithful baseline an LLM captioner is compared against.
"""

from __future__ import annotations

from collections import Counter

from loupe.pipeline.stages.fuse.prompt import Evidence


def position(box) -> str:
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    if (row, col) == ("middle", "center"):
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    return f"at the {row}" if col == "center" else f"at the {row} {col}"


def size_word(box) -> str:
    x1, y1, x2, y2 = (float(v) for v in box)
    area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return "large " if area >= 0.25 else "small " if area < 0.02 else ""


def _plural(label: str, n: int) -> str:
    if n == 1:
        return f"a {label}" if label[:1].lower() not in "aeiou" else f"an {label}"
    words = {2: "two", 3: "three", 4: "four", 5: "five"}
    noun = label if label.endswith("s") else label + ("es" if label.endswith(("x", "ch", "sh")) else "s")
    return f"{words.get(n, str(n))} {noun}"


def _orientation(ev: Evidence) -> str:
    if not ev.width or not ev.height:
        return "image"
    r = ev.width / ev.height
    kind = "landscape" if r > 1.15 else "portrait" if r < 0.87 else "square"
    return f"{kind} image ({ev.width}x{ev.height} pixels)"


def compose(ev: Evidence) -> str:
    parts: list[str] = []
    alt = (ev.alt_text or "").strip().rstrip(".")
    head = f"This {_orientation(ev)}"
    if alt:
        parts.append(f'{head} comes with the description "{alt}".')
    else:
        parts.append(f"{head} has no accompanying description.")
    if ev.tags:
        tags = [t["tag"] for t in ev.tags[:5]]
        parts.append("Its content suggests " + _join(tags) + ".")
    if ev.boxes:
        counts = Counter(b["label"] for b in ev.boxes)
        parts.append("Visible objects include " + _join([_plural(lb, n) for lb, n in counts.items()]) + ".")
        seen: set[str] = set()
        for b in ev.boxes:
            if b["label"] in seen:
                continue
            seen.add(b["label"])
            parts.append(f"A {size_word(b['box'])}{b['label']} appears {position(b['box'])}.")
    if ev.ocr:
        lines = [o["text"].strip() for o in ev.ocr if o["text"].strip()]
        if len(lines) == 1:
            parts.append(f'Text in the image reads "{lines[0]}".')
        elif lines:
            first = ev.ocr[0]["box"]
            parts.append(
                f"The image contains {len(lines)} lines of text, starting {position(first)}: "
                + "; ".join(f'"{t}"' for t in lines)
                + "."
            )
    return " ".join(parts)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
