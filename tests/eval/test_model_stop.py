"""Greedy decoding stops where the chat format ends an answer."""

from __future__ import annotations


def test_llama3_answers_stop_at_the_end_of_turn_token():
    """A model trained with the llama3 template ends answers with <|eot_id|>, not EOS."""
    from loupe.eval.model import TokenVLM
    from loupe.train.tiny import tiny_tokenizer
    from loupe.train.tokenizer import prepare_tokenizer

    m = TokenVLM()
    m.tokenizer = prepare_tokenizer(tiny_tokenizer())
    m.chat_format = "llama3"
    eot = m.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert m._stop_ids() == [m.tokenizer.eos_token_id, eot]
    m.chat_format = "vicuna_v1"
    assert m._stop_ids() == [m.tokenizer.eos_token_id]
