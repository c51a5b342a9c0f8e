"""url_list under ``--executor ray``: img2dataset's Ray distributor on a private local Ray cluster,
downloading from the real HTTP test server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.ingest.url_list import UrlList
from loupe.schemas.recipe import UrlListSource
from loupe.schemas.uid import url_uid

try:  # tests/ingest is a plain folder on sys.path (pytest's default "prepend" import mode)
    from test_url_list import _recipe, _sha
    from url_server import ImageServer, closed_port, make_images
except ImportError:
    from .test_url_list import _recipe, _sha
    from .url_server import ImageServer, closed_port, make_images

from ray_helpers import private_ray

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("img2dataset") is None or importlib.util.find_spec("ray") is None,
        reason="needs img2dataset and ray (pip install 'loupe[ingest,ray]')",
    ),
]


@pytest.fixture(scope="module")
def local_ray():
    with private_ray(__name__) as ray:
        yield ray


@pytest.fixture
def server():
    srv = ImageServer(make_images(10)).start()
    yield srv
    srv.stop()


def test_img2dataset_distributor_follows_the_executor(tmp_path):
    cfg = UrlListSource(type="url_list", name="web", path="u.parquet")
    ctx = StageContext(run=RunDir(tmp_path / "run"), recipe_dir=tmp_path, stage_name="ingest")
    args = UrlList(cfg, ctx).img2dataset_args(tmp_path / "in.parquet", tmp_path / "out", [])
    assert args["distributor"] == "multiprocessing"
    ctx.ray_address = "127.0.0.1:6379"
    assert (
        UrlList(cfg, ctx).img2dataset_args(tmp_path / "in.parquet", tmp_path / "out", [])["distributor"]
        == "ray"
    )


def test_ray_ingest_lands_good_images_drops_bad_once_and_retries_only_the_failed(tmp_path, server, local_ray):
    from loupe.pipeline.executors.ray import run_ray

    good = {server.url(f"/img/{n}"): data for n, data in server.images.items()}
    flaky = {server.url(f"/flaky/{n}"): data for n, data in list(server.images.items())[:2]}
    bad = {
        server.url("/404"): "http_404",
        server.url("/notimage"): "decode_error",
        f"http://127.0.0.1:{closed_port()}/x.jpg": "connection_refused",
    }
    urls = [*good, *flaky, *bad]
    recipe = _recipe(tmp_path, urls, resize_mode="no", allow_private_urls=True, retry_failed=True)
    server.failing = True
    plan = make_plan(load_recipe(recipe))
    m = run_ray(plan, quiet=True)
    samples = plan.run.read_table("samples").to_pylist()
    drops = plan.run.read_table("drops").to_pylist()
    uid_of = {url_uid("web", u): u for u in urls}
    assert m["ingest"]["rows_out"] == len(samples) == len(good) == 10
    assert {s["url"]: s["sha256"] for s in samples} == {u: _sha(b) for u, b in good.items()}
    expected = {**bad, **{u: "http_503" for u in flaky}}
    assert sorted(uid_of[d["uid"]] for d in drops) == sorted(expected)  # one row per bad URL
    assert {uid_of[d["uid"]]: d["reason"] for d in drops} == expected
    assert plan.run.manifest()["executor"] == "ray"

    server.failing = False
    server.log.clear()
    m2 = run_ray(make_plan(load_recipe(recipe)), quiet=True)
    requested = {urlsplit(p).path for p in server.log}
    assert requested == {urlsplit(u).path for u in [*flaky, *bad] if u.startswith(server.base)}
    assert m2["ingest"]["rows_out"] == 2 and m2["ingest"]["drops"] == 0
    assert plan.run.live_uids() == {url_uid("web", u) for u in [*good, *flaky]}
    assert plan.run.read_table("drops").num_rows == len(drops)  # nothing dropped twice


def test_ray_download_workers_refuse_private_hosts_themselves(tmp_path, server, local_ray):
    """The guard is installed in img2dataset's Ray workers (worker_process_setup_hook): with the
    driver's pre-check bypassed, a request to 127.0.0.1 is still refused, and nothing is fetched."""
    cfg = UrlListSource(type="url_list", name="web", path="u.parquet", thread_count=2)
    ctx = StageContext(
        run=RunDir(tmp_path / "run"),
        recipe_dir=tmp_path,
        stage_name="ingest",
        ray_address=local_ray.get_runtime_context().gcs_address,
    )
    urls = [server.url(f"/img/{n}") for n in list(server.images)[:3]]
    outs = list(UrlList(cfg, ctx)._download(pa.table({"url": urls, "caption": ["a", "b", "c"]}), retry=set()))
    drops = pa.concat_tables([o.drops for o in outs]).to_pylist()
    assert sorted(d["uid"] for d in drops) == sorted(url_uid("web", u) for u in urls)
    assert {d["reason"] for d in drops} == {"ssrf_refused"} and all("127.0.0.1" in d["detail"] for d in drops)
    assert server.log == []
