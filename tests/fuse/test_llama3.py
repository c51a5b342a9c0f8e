"""``llama3_render`` equals Meta's Llama-3 Instruct chat template rendered by transformers."""

from __future__ import annotations

import pytest

from loupe.schemas.llama3 import llama3_render

# Meta-Llama-3-8B-Instruct tokenizer_config.json "chat_template", verbatim.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "[UNK]"]
    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  unk_token="[UNK]")
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


CONVERSATIONS = [
    [{"from": "human", "value": "<image>\nDescribe this image in detail."}, {"from": "gpt", "value": "A red bus."}],
    [
        {"from": "system", "value": "You are a helpful vision assistant."},
        {"from": "human", "value": "  What text appears in the image?\n"},
        {"from": "gpt", "value": "EXIT\nOPEN 24 HOURS  "},
        {"from": "human", "value": "Where is the bus in the image? Answer with a box [x1, y1, x2, y2] in 0-1 coordinates."},
        {"from": "gpt", "value": "[0.100, 0.250, 0.667, 0.900]"},
    ],
    [{"from": "human", "value": "Ünïcödé — 日本語 \t"}, {"from": "gpt", "value": "\n\nok"}],
]


@pytest.mark.parametrize("turns", CONVERSATIONS)
@pytest.mark.parametrize("gen", [False, True])
def test_llama3_render_matches_official_template(tokenizer, turns, gen):
    msgs = [{"role": ROLE[t["from"]], "content": t["value"]} for t in turns]
    want = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert llama3_render(turns, add_generation_prompt=gen) == want
    # role/content dicts render the same
    assert llama3_render(msgs, add_generation_prompt=gen) == want


def test_llama3_system_argument_is_a_leading_system_turn(tokenizer):
    turns = CONVERSATIONS[0]
    msgs = [{"role": "system", "content": "Be brief."}] + [{"role": ROLE[t["from"]], "content": t["value"]} for t in turns]
    assert llama3_render(turns, system="Be brief.") == tokenizer.apply_chat_template(msgs, tokenize=False)
    assert llama3_render(turns, system="Be brief.").startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    )
