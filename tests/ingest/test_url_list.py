"""url_list source: real img2dataset downloads from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.error import URLError
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.ingest import ssrf
from loupe.pipeline.stages.ingest.url_list import UrlList, failure_reason
from loupe.schemas.recipe import Recipe, UrlListSource
from loupe.schemas.uid import url_uid

try:  # tests/ingest is a plain folder on sys.path (pytest's default "prepend" import mode)
    from url_server import ImageServer, closed_port, make_images
except ImportError:
    from .url_server import ImageServer, closed_port, make_images

REPO = Path(__file__).resolve().parents[2]
#: tests that really download: img2dataset comes with the ``ingest`` extra
needs_img2dataset = pytest.mark.skipif(
    importlib.util.find_spec("img2dataset") is None, reason="needs img2dataset (pip install 'loupe[ingest]')"
)


@pytest.fixture
def server():
    srv = ImageServer(make_images(56)).start()
    yield srv
    srv.stop()


def _recipe(tmp_path: Path, urls: list[str], **source) -> Path:
    pq.write_table(
        pa.table(
            {
                "url": urls,
                "caption": [f"caption {i}" for i in range(len(urls))],
                "license": ["cc-by"] * len(urls),
            }
        ),
        tmp_path / "urls.parquet",
    )
    cfg = {
        "type": "url_list",
        "name": "web",
        "path": "urls.parquet",
        "save_additional_columns": ["license"],
        "processes_count": 1,
        "thread_count": 8,
        "timeout": 5,
        **source,
    }
    recipe = {"name": "urls", "output": "runs", "sources": [cfg]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.mark.slow
@needs_img2dataset
def test_good_images_land_bad_urls_drop_once_and_rerun_retries_only_the_failed(tmp_path, server):
    good = {server.url(f"/img/{n}"): data for n, data in server.images.items()}
    flaky = {server.url(f"/flaky/{n}"): data for n, data in list(server.images.items())[:6]}
    bad = {
        server.url("/404"): "http_404",
        server.url("/notimage"): "decode_error",
        server.url("/truncated.jpg"): "decode_error",
        server.url("/loop"): "redirect_error",
        f"http://127.0.0.1:{closed_port()}/x.jpg": "connection_refused",
    }
    urls = [*good, *flaky, *bad]
    recipe = _recipe(tmp_path, urls, resize_mode="no", allow_private_urls=True)
    server.failing = True

    plan = make_plan(load_recipe(recipe))
    m = run_local(plan, quiet=True)
    samples = plan.run.read_table("samples").to_pylist()
    drops = plan.run.read_table("drops").to_pylist()
    uid_of = {url_uid("web", u): u for u in urls}

    # every good image, byte-identical to what the server sent (resize_mode "no")
    assert len(samples) == len(good) == 56 and m["ingest"]["rows_out"] == 56
    for s in samples:
        assert s["sha256"] == _sha(good[s["url"]]) == _sha(s["image"])
        assert s["uid"] == url_uid("web", s["url"]) and s["source"] == "web"
        assert s["alt_text"] == f"caption {urls.index(s['url'])}"
        assert json.loads(s["meta"])["license"] == "cc-by" and s["width"] >= 48 and s["height"] >= 48
    # every bad URL (and every 503) has exactly one drop row with its reason and img2dataset's message
    expected = {**bad, **{u: "http_503" for u in flaky}}
    assert sorted(uid_of[d["uid"]] for d in drops) == sorted(expected)
    for d in drops:
        assert d["stage"] == "ingest" and d["reason"] == expected[uid_of[d["uid"]]], d
        assert d["detail"]
    assert "HTTP Error 503" in next(d["detail"] for d in drops if d["reason"] == "http_503")
    # nothing lost, nothing counted twice
    assert {s["uid"] for s in samples} | {d["uid"] for d in drops} == set(uid_of)
    assert plan.run.live_uids() == {url_uid("web", u) for u in good}
    assert not (plan.run.path / "_state" / "ingest" / "url_list" / "web").exists()  # scratch removed

    # the server recovers; a rerun asks img2dataset for the failed URLs only
    server.failing = False
    server.log.clear()
    m2 = run_local(make_plan(load_recipe(recipe)), quiet=True)
    requested = {urlsplit(p).path for p in server.log}
    assert requested == {urlsplit(u).path for u in [*flaky, *bad] if u.startswith(server.base)}
    assert not any(p.startswith("/img/") for p in server.log)
    assert m2["ingest"]["rows_out"] == len(flaky) and m2["ingest"]["drops"] == 0
    samples2 = plan.run.read_table("samples").to_pylist()
    assert len(samples2) == 62
    assert {s["url"]: s["sha256"] for s in samples2 if s["url"] in flaky} == {
        u: _sha(b) for u, b in flaky.items()
    }
    # the 503 drops are superseded; the permanently bad URLs still have exactly one row each
    assert plan.run.live_uids() == {url_uid("web", u) for u in [*good, *flaky]}
    assert plan.run.read_table("drops").num_rows == len(drops)
    per_reason = query(plan.run, "SELECT reason, count(*) n FROM drops GROUP BY reason ORDER BY reason")
    assert dict(zip(*per_reason.to_pydict().values())) == {
        "connection_refused": 1,
        "decode_error": 2,
        "http_404": 1,
        "http_503": 6,
        "redirect_error": 1,
    }


@pytest.mark.slow
@needs_img2dataset
def test_resize_keeps_ratio_and_records_stored_bytes(tmp_path, server):
    names = list(server.images)[:8]
    recipe = _recipe(
        tmp_path,
        [server.url(f"/img/{n}") for n in names],
        resize_mode="keep_ratio",
        image_size=32,
        resize_only_if_bigger=False,
        allow_private_urls=True,
    )
    plan = make_plan(load_recipe(recipe))
    run_local(plan, quiet=True)
    rows = plan.run.read_table("samples").to_pylist()
    assert len(rows) == 8
    for r in rows:
        served = server.images[r["url"].rsplit("/", 1)[-1]]
        meta = json.loads(r["meta"])
        assert min(r["width"], r["height"]) == 32  # keep_ratio: the short side becomes image_size
        assert r["image"][:3] == b"\xff\xd8\xff" and r["sha256"] == _sha(r["image"]) != _sha(served)
        assert meta["download_sha256"] == _sha(served)  # img2dataset's hash of the downloaded bytes


def test_private_urls_are_refused_without_a_request(tmp_path, server):
    port = urlsplit(server.base).port
    urls = [
        server.url("/img/0.png"),
        f"http://localhost:{port}/img/1.jpg",
        f"http://[::1]:{port}/img/2.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.7/a.jpg",
        "http://192.168.1.1/a.jpg",
        f"http://2130706433:{port}/img/3.jpg",  # 127.0.0.1 written as one integer
    ]
    recipe = _recipe(tmp_path, [*urls, "ftp://example.com/a.jpg"])
    env = dict(os.environ, WANDB_MODE="disabled")
    res = subprocess.run(
        [str(Path(sys.executable).parent / "loupe"), "run", str(recipe), "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    run = RunDir(next((tmp_path / "runs" / "urls").iterdir()))
    drops = {d["uid"]: d for d in run.read_table("drops").to_pylist()}
    assert run.read_table("samples").num_rows == 0
    for u in urls:
        d = drops[url_uid("web", u)]
        assert d["reason"] == "ssrf_refused" and "allow_private_urls" in d["detail"], d
    assert drops[url_uid("web", "ftp://example.com/a.jpg")]["reason"] == "invalid_url"
    assert server.log == []  # nothing was fetched


@pytest.mark.slow
@needs_img2dataset
def test_download_processes_refuse_private_hosts_themselves(tmp_path, server):
    """Defence in depth: the guard installed in img2dataset's spawned workers refuses the request
    even when the pre-check is bypassed (what a redirect to a private host would meet)."""
    cfg = UrlListSource(type="url_list", name="web", path="u.parquet", processes_count=1, thread_count=2)
    src = UrlList(cfg, StageContext(run=RunDir(tmp_path / "run"), recipe_dir=tmp_path, stage_name="ingest"))
    urls = [server.url(f"/img/{n}") for n in list(server.images)[:3]]
    outs = list(src._download(pa.table({"url": urls, "caption": ["a", "b", "c"]}), retry=set()))
    drops = pa.concat_tables([o.drops for o in outs]).to_pylist()
    assert sorted(d["uid"] for d in drops) == sorted(url_uid("web", u) for u in urls)
    assert {d["reason"] for d in drops} == {"ssrf_refused"} and all("127.0.0.1" in d["detail"] for d in drops)
    assert server.log == []


def test_guard_checks_every_redirect_hop(server):
    port = urlsplit(server.base).port
    target = f"http://localhost:{port}/img/0.png"
    url = server.url(f"/redirect?to={quote(target, safe='')}")

    # in this test "localhost" plays the private host and 127.0.0.1 the public one
    def refuse(u: str):
        return ("ssrf_refused", "localhost is private here") if urlsplit(u).hostname == "localhost" else None

    opener = urllib.request.build_opener(ssrf.GuardHandler(refuse))
    with pytest.raises(URLError, match="ssrf_refused") as e:
        opener.open(url, timeout=5)
    assert failure_reason("failed_to_download", str(e.value)) == "ssrf_refused"
    assert [urlsplit(p).path for p in server.log] == ["/redirect"]  # the private hop was never requested
    # the same redirect without the guard reaches the image
    with urllib.request.build_opener().open(url, timeout=5) as r:
        assert r.read() == server.images["0.png"]
    # urllib also follows http -> ftp redirects: the default check refuses the non-http hop
    to_ftp = server.url(f"/redirect?to={quote(f'ftp://127.0.0.1:{closed_port()}/x', safe='')}")
    guard = ssrf.GuardHandler(lambda u: None if u.startswith(server.base) else ssrf.url_refusal(u))
    with pytest.raises(URLError, match="ssrf_refused: 'ftp://"):
        urllib.request.build_opener(guard).open(to_ftp, timeout=5)


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fd00:ec2::254",
        "::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        "0.0.0.0",
        "100.64.0.1",
        "100.100.100.200",
        "fe80::1%eth0",
        "240.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(addr):
    assert ssrf.address_refusal(addr) is not None


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.215.14"])
def test_public_addresses_pass(addr):
    assert ssrf.address_refusal(addr) is None


def test_url_refusal_reasons():
    assert ssrf.url_refusal("ftp://a.example/x.jpg")[0] == "invalid_url"
    assert ssrf.url_refusal("http:///x.jpg")[0] == "invalid_url"
    assert ssrf.url_refusal("http://[::1/x")[0] == "invalid_url"
    assert ssrf.url_refusal("http://no-such-host.invalid/x.jpg")[0] == "dns_error"
    assert ssrf.url_refusal("http://8.8.8.8/x.jpg") is None


def _src(tmp_path: Path, **kw) -> UrlList:
    cfg = UrlListSource(type="url_list", name="web", **kw)
    return UrlList(cfg, StageContext(run=None, recipe_dir=tmp_path, stage_name="ingest"))


def test_url_table_formats_and_column_errors(tmp_path):
    (tmp_path / "a.csv").write_text('link,text\nhttp://x/1.jpg,"one, two"\nhttp://x/2.jpg,three\n')
    t = _src(tmp_path, path="a.csv", input_format="csv", url_col="link", caption_col="text").url_table()
    assert t.to_pydict() == {
        "url": ["http://x/1.jpg", "http://x/2.jpg"],
        "caption": ["one, two", "three"],
        "url_error": [None, None],  # set only for a URL cell that is not UTF-8 text
    }
    (tmp_path / "b.tsv").write_text("url\tcaption\tlicense\nhttp://x/3.jpg\tc\t7\n")
    t = _src(tmp_path, path="b.tsv", input_format="tsv", save_additional_columns=["license"]).url_table()
    assert t.to_pylist() == [{"url": "http://x/3.jpg", "caption": "c", "license": "7", "url_error": None}]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "p1.jsonl").write_text('{"url": "http://x/4.jpg", "caption": "d"}\n')
    (tmp_path / "d" / "p2.jsonl").write_text('{"url": "http://x/5.jpg", "caption": null}\n')
    t = _src(tmp_path, path="d", input_format="json").url_table()
    assert t["url"].to_pylist() == ["http://x/4.jpg", "http://x/5.jpg"] and t["caption"].to_pylist() == [
        "d",
        None,
    ]
    (tmp_path / "u.txt").write_text("http://x/6.jpg\n\nhttp://x/7.jpg\n")
    t = _src(tmp_path, path="u.txt", input_format="txt", caption_col=None).url_table()
    assert t["url"].to_pylist() == ["http://x/6.jpg", "http://x/7.jpg"]

    with pytest.raises(RecipeError, match=r"a.csv has no column 'url'.*its columns: link, text"):
        _src(tmp_path, path="a.csv", input_format="csv").url_table()
    with pytest.raises(RecipeError, match=r"save_additional_columns \['status'\] clash"):
        _src(tmp_path, path="b.tsv", input_format="tsv", save_additional_columns=["status"]).url_table()
    with pytest.raises(RecipeError, match=r"holds no .parquet file"):
        _src(tmp_path, path="d").url_table()
    with pytest.raises(RecipeError, match=r"does not exist"):
        _src(tmp_path, path="nope.parquet").url_table()


def test_duplicates_and_empty_urls_without_download(tmp_path):
    """Refused and invalid rows never start img2dataset; a URL listed twice is one sample."""
    urls = [
        "http://10.0.0.1/a.jpg",
        "http://10.0.0.1/a.jpg",
        "",
        None,
        "http://127.0.0.1/b.jpg",
        "http://[::1/x",
    ]
    pq.write_table(pa.table({"url": pa.array(urls, pa.string())}), tmp_path / "u.parquet")
    src = _src(tmp_path, path="u.parquet", caption_col=None)
    drops = pa.concat_tables([o.drops for o in src.read(set())]).to_pylist()
    reasons = ["invalid_url", "invalid_url", "ssrf_refused", "ssrf_refused", "invalid_url"]
    assert [d["reason"] for d in drops] == reasons
    assert len({d["uid"] for d in drops}) == 5
    skip = {d["uid"] for d in drops}
    assert list(src.read(skip)) == []  # refusals are final: not retried


def test_laion_recipe_validates():
    raw = yaml.safe_load((REPO / "recipes" / "laion.yaml").read_text())
    recipe = Recipe.model_validate(raw)
    src = recipe.sources[0]
    assert src.type == "url_list" and src.url_col == "url" and src.caption_col == "caption"
    assert src.allow_private_urls is False and src.retry_failed is True
