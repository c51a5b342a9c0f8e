"""Chat templates: rendered text equals the upstream formats; labels only on assistant spans."""

from __future__ import annotations

import pytest

from loupe.schemas.llama3 import llama3_render
from loupe.train.templates import IGNORE, SkipSample, encode, load_template, render, template_names
from loupe.train.tiny import tiny_tokenizer

TURNS = [
    {"from": "human", "value": "<image>\nWhat is it?"},
    {"from": "gpt", "value": "A red square."},
    {"from": "human", "value": "Any text?"},
    {"from": "gpt", "value": "No."},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def learned_text(tok, enc) -> list[str]:
    """Decoded runs of consecutive learned tokens."""
    runs, cur = [], []
    for i, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def _enc(tok, name, turns=TURNS, n_img=5, learn="assistant", max_length=512, has_image=True):
    segs = render(load_template(name), turns, has_image, tok.bos_token, tok.eos_token)
    return segs, encode(segs, tok, n_img if has_image else 0, max_length, learn)


def test_shipped_templates():
    assert template_names() == ["llama3", "plain", "vicuna_v1"]
    with pytest.raises(
        ValueError, match="data.template: 'chatml' is not a template; valid: llama3, plain, vicuna_v1"
    ):
        load_template("chatml")


def test_llama3_text_and_labels(tok):
    segs, enc = _enc(tok, "llama3")
    text = "".join(s for s, _ in segs)
    plain_turns = [{"from": t["from"], "value": t["value"].replace("<image>\n", "")} for t in TURNS]
    want = llama3_render(plain_turns).replace("<|begin_of_text|>", "<s>")  # tiny tokenizer's BOS
    assert text == want.replace("user<|end_header_id|>\n\nWhat", "user<|end_header_id|>\n\n<image>\nWhat")
    assert learned_text(tok, enc) == ["A red square.<|eot_id|>", "No.<|eot_id|>"]
    assert enc.input_ids.count(tok.convert_tokens_to_ids("<image>")) == 5
    assert enc.labels[0] == IGNORE and enc.input_ids[0] == tok.bos_token_id


def test_vicuna_v1_text_and_labels(tok):
    segs, enc = _enc(tok, "vicuna_v1")
    text = "".join(s for s, _ in segs)
    sys = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions."
    )
    assert text == (
        f"<s>{sys} USER: <image>\nWhat is it? ASSISTANT: A red square.</s>USER: Any text? ASSISTANT: No.</s>"
    )
    assert [r.strip() for r in learned_text(tok, enc)] == ["A red square.</s>", "No.</s>"]


def test_plain_is_image_then_caption(tok):
    turns = TURNS[:2]
    segs, enc = _enc(tok, "plain", turns)
    assert "".join(s for s, _ in segs) == "<s><image>A red square.\n"
    assert learned_text(tok, enc) == ["A red square.\n"]
    assert enc.labels[: 1 + 5] == [IGNORE] * 6
    with pytest.raises(SkipSample, match="exactly 2 turns"):
        _enc(tok, "plain", TURNS)
    with pytest.raises(SkipSample, match="needs an image"):
        _enc(tok, "plain", turns, has_image=False)


def test_all_after_bos_learns_every_text_token_but_bos_and_image(tok):
    _, enc = _enc(tok, "llama3", learn="all_after_bos")
    iid = tok.convert_tokens_to_ids("<image>")
    for i, (t, lab) in enumerate(zip(enc.input_ids, enc.labels)):
        assert (lab == IGNORE) == (i == 0 or t == iid)


def test_text_only_sample(tok):
    turns = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]
    _, enc = _enc(tok, "vicuna_v1", turns, has_image=False)
    assert tok.convert_tokens_to_ids("<image>") not in enc.input_ids
    assert [r.strip() for r in learned_text(tok, enc)] == ["Hello.</s>"]


def test_truncation_never_cuts_the_image(tok):
    _, full = _enc(tok, "llama3", n_img=20)
    # cut inside the second answer: kept, image whole, labels truncated with ids
    cut = len(full.input_ids) - 3
    _, enc = _enc(tok, "llama3", n_img=20, max_length=cut)
    assert len(enc.input_ids) == cut and enc.input_ids == full.input_ids[:cut]
    with pytest.raises(SkipSample, match="image tokens end at 27 > data.max_length 20"):
        _enc(tok, "llama3", n_img=20, max_length=20)
    with pytest.raises(SkipSample, match="no learned token"):
        _enc(tok, "llama3", n_img=20, max_length=28)


def test_empty_turn_and_system_prompt(tok):
    with pytest.raises(SkipSample, match="empty gpt turn"):
        _enc(tok, "llama3", [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "  "}])
    segs = render(load_template("vicuna_v1"), TURNS[:2], True, "<s>", "</s>", system="Be brief.")
    assert "".join(s for s, _ in segs).startswith("<s>Be brief. USER: <image>\n")


@pytest.mark.parametrize("name", ["llama3", "vicuna_v1"])
def test_generation_prompt_is_the_training_prefix(tok, name):
    from loupe.train.templates import prompt_ids

    turns = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A red square."}]
    _, enc = _enc(tok, name, turns, n_img=5)
    ids = prompt_ids(load_template(name), tok, "What is it?", 5)
    first_learned = next(i for i, lab in enumerate(enc.labels) if lab != IGNORE)
    assert ids == enc.input_ids[:first_learned]


def test_tiny_tokenizer_splits_digits_one_per_token():
    from loupe.train.tiny import tiny_tokenizer

    tok = tiny_tokenizer(["the answer is 42 and 4242 and 42"] * 50)
    pieces = tok.tokenize("42 17")
    assert [p.lstrip("Ġ") for p in pieces if p.lstrip("Ġ")] == ["4", "2", "1", "7"]
    assert tok.decode(tok("read 42\n7", add_special_tokens=False)["input_ids"]) == "read 42\n7"
