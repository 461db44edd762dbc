"""Search and fetch against real servers on localhost: a rustac STAC API and an HTTP server with range requests.

The demo items are loaded into ``rustac serve`` (in-memory backend) with their asset hrefs rewritten to point at a
threaded HTTP server that serves the demo COGs and honours ``Range:`` (Python's SimpleHTTPRequestHandler does not),
so GDAL reads them through ``/vsicurl`` exactly as it reads Earth Search or Planetary Computer. Nothing is mocked.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pixeldino.errors import InputError, NoScenesError
from pixeldino.fetch import fetch_scene
from pixeldino.manifest import read_manifest
from pixeldino.providers import StacParams
from pixeldino.search import SearchParams, search_scenes

REPO = Path(__file__).resolve().parents[1]
DEMO_STAC = REPO / "resources" / "demo" / "stac"
COLLECTION = DEMO_STAC / "sentinel-2-l1c"
RUSTAC = Path(sys.executable).with_name("rustac")
PEEL = ["B02", "B03", "B04", "B05", "B06", "B07", "B08"]
WAIT_S = 20.0

pytestmark = [
    pytest.mark.skipif(not (DEMO_STAC / "catalog.json").exists(), reason="resources/demo is not built"),
    pytest.mark.skipif(not RUSTAC.exists(), reason="rustac is not installed in this environment"),
]


def search(catalog: str | Path, *, collection: str | None = None, bands: list[str], **params) -> dict:
    """:func:`search_scenes` on a catalog or API; ``params`` are :class:`SearchParams` fields."""
    stac = StacParams(catalog=str(catalog), collection=collection)
    return search_scenes(SearchParams(**params), stac, bands=bands)


class RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under ``server.root`` with HEAD, GET and single-range ``Range: bytes=a-b`` requests.

    ``server.fail`` maps a path to a number of requests that are answered 503 first (a transient error),
    ``server.throttle`` maps a path to ``[requests left, status, Retry-After, ranged reads only]`` (a provider's
    rate limit), ``server.log`` records (method, path, range header) of every request and ``server.answers``
    (monotonic time, method, path, status).
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def _file(self) -> Path | None:
        path = (self.server.root / self.path.split("?", 1)[0].lstrip("/")).resolve()  # type: ignore[attr-defined]
        return path if path.is_file() and self.server.root in path.parents else None  # type: ignore[attr-defined]

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _handle(self) -> None:
        srv = self.server
        srv.log.append((self.command, self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        with srv.lock:  # type: ignore[attr-defined]
            left = srv.fail.get(self.path, 0)  # type: ignore[attr-defined]
            if left:
                srv.fail[self.path] = left - 1  # type: ignore[attr-defined]
            throttle = srv.throttle.get(self.path)  # type: ignore[attr-defined]
            ranged_read = self.command == "GET" and not (self.headers.get("Range") or "bytes=0-").startswith("bytes=0-")
            throttled = bool(throttle and throttle[0] > 0 and (ranged_read or not throttle[3]))
            if throttled:
                throttle[0] -= 1
        if left or throttled:
            status, retry_after = (throttle[1], throttle[2]) if throttled else (503, "0")
            srv.answers.append((time.monotonic(), self.command, self.path, status))  # type: ignore[attr-defined]
            self._send(status, {"Content-Length": "0", "Retry-After": retry_after})
            return
        srv.answers.append((time.monotonic(), self.command, self.path, 200))  # type: ignore[attr-defined]
        path = self._file()
        if path is None:
            self._send(404, {"Content-Length": "0"})
            return
        data = path.read_bytes()
        size = len(data)
        spec = self.headers.get("Range")
        if spec is None:
            self._send(
                200,
                {"Content-Length": str(size), "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"},
                data,
            )
            return
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
        if not m or (not m.group(1) and not m.group(2)):
            self._send(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
            return
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or start > end:
            self._send(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
            return
        self._send(
            206,
            {
                "Content-Range": f"bytes {start}-{end}/{size}",
                "Content-Length": str(end - start + 1),
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            },
            data[start : end + 1],
        )

    do_GET = _handle
    do_HEAD = _handle


class RangeServer:
    """A threaded HTTP server for ``root`` on 127.0.0.1 (free port), stopped by :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeRequestHandler)
        self.httpd.daemon_threads = True
        self.httpd.root = root.resolve()  # type: ignore[attr-defined]
        self.httpd.fail = {}  # type: ignore[attr-defined]
        self.httpd.throttle = {}  # type: ignore[attr-defined]
        self.httpd.answers = []  # type: ignore[attr-defined]
        self.httpd.log = []  # type: ignore[attr-defined]
        self.httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def log(self) -> list[tuple[str, str, str | None]]:
        return self.httpd.log  # type: ignore[attr-defined]

    def fail_next(self, path: str, times: int) -> None:
        """Answer the next ``times`` requests for ``path`` with 503."""
        self.httpd.fail[path] = times  # type: ignore[attr-defined]

    def throttle_next(
        self, path: str, times: int, status: int, retry_after: str, ranged_reads_only: bool = False
    ) -> None:
        """Answer the next ``times`` requests for ``path`` (only block reads, if asked) with ``status`` and
        ``Retry-After: retry_after``."""
        self.httpd.throttle[path] = [times, status, retry_after, ranged_reads_only]  # type: ignore[attr-defined]

    def answers_for(self, path: str) -> list[tuple[float, str, str, int]]:
        return [a for a in self.httpd.answers if a[2] == path]  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=WAIT_S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rustac serve exited with {proc.returncode}: {proc.stderr.read().decode()[:500]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {WAIT_S} s")


def _served_copy(tmp: Path, base_url: str) -> tuple[Path, Path]:
    """The demo collection and items as two JSON files, asset hrefs rewritten to ``base_url``."""
    collection = json.loads((COLLECTION / "collection.json").read_text())
    collection["links"] = []
    features = []
    for item_path in sorted(COLLECTION.glob("*/*.json")):
        item = json.loads(item_path.read_text())
        item["links"] = []
        for asset in item["assets"].values():
            asset["href"] = f"{base_url}/{item_path.parent.name}/{asset['href'].removeprefix('./')}"
        features.append(item)
    coll_file, items_file = tmp / "collection.json", tmp / "items.json"
    coll_file.write_text(json.dumps(collection))
    items_file.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return coll_file, items_file


@pytest.fixture(scope="module")
def cog_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo COGs (tests may damage or remove files in it)."""
    root = tmp_path_factory.mktemp("cogs")
    for item_dir in COLLECTION.iterdir():
        if item_dir.is_dir():
            shutil.copytree(item_dir, root / item_dir.name)
    return root


@pytest.fixture(scope="module")
def range_server(cog_root: Path) -> Iterator[RangeServer]:
    server = RangeServer(cog_root)
    yield server
    server.close()


@pytest.fixture(scope="module")
def stac_api(tmp_path_factory: pytest.TempPathFactory, range_server: RangeServer) -> Iterator[str]:
    """``rustac serve`` with the demo items (hrefs on the range server); yields the API root URL."""
    tmp = tmp_path_factory.mktemp("rustac")
    coll_file, items_file = _served_copy(tmp, range_server.url)
    addr = f"127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [str(RUSTAC), "serve", "--addr", addr, str(coll_file), str(items_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp,
    )
    url = f"http://{addr}"
    try:
        _wait_for(url + "/", proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT_S)


def test_range_server_answers_ranges(range_server: RangeServer, cog_root: Path) -> None:
    data = (cog_root / "S2_08WMA_20210821" / "B04.tif").read_bytes()
    url = f"{range_server.url}/S2_08WMA_20210821/B04.tif"
    for spec, expected in (("bytes=0-15", data[:16]), ("bytes=100-", data[100:]), ("bytes=-10", data[-10:])):
        req = urllib.request.Request(url, headers={"Range": spec})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 206 and resp.read() == expected
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": f"bytes={len(data)}-"}), timeout=5)
    assert err.value.code == 416


def test_search_against_rustac_returns_the_demo_scenes(stac_api: str, range_server: RangeServer) -> None:
    api = search(stac_api, collection="sentinel-2-l1c", datetime="2021-06-01/2021-09-30", bands=PEEL[:4])
    local = search(DEMO_STAC / "catalog.json", datetime="2021-06-01/2021-09-30", bands=PEEL[:4])
    assert api["provider"]["name"] == "custom"
    # rustac's memory backend announces neither the Filter nor the Query extension: filters run on the client
    assert api["provider"]["server_filter"] == "client"
    assert (
        [s["id"] for s in api["scenes"]]
        == [s["id"] for s in local["scenes"]]
        == ["S2_08WMA_20210821", "S2_52WEE_20210721"]
    )
    for a, b in zip(api["scenes"], local["scenes"]):
        for key in ("tile", "datetime", "cloud_cover", "processing_baseline", "crs", "clear_fraction"):
            assert a[key] == b[key], key
        assert a["assets"]["B04"] == f"{range_server.url}/{a['id']}/B04.tif"
    # server-side spatial search plus client-side limits
    m = search(
        stac_api, collection="sentinel-2-l1c", aoi=[-135.7, 68.0, -135.6, 68.1], max_cloud_cover=3, bands=PEEL[:4]
    )
    assert [s["tile"] for s in m["scenes"]] == ["08WMA"]


def test_search_over_api_by_tile_and_season(stac_api: str) -> None:
    m = search(stac_api, collection="sentinel-2-l1c", tiles=["52WEE"], years=[2020, 2021], months=[7], bands=PEEL[:4])
    assert [s["id"] for s in m["scenes"]] == ["S2_52WEE_20210721"]
    assert m["query"]["windows"] == ["2020-07-01/2020-07-31", "2021-07-01/2021-07-31"]
    with pytest.raises(NoScenesError) as err:
        search(
            stac_api,
            collection="sentinel-2-l1c",
            tiles=["08WMA"],
            years=[2022, 2023],
            max_cloud_cover=10,
            bands=PEEL[:4],
        )
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("08WMA", "2022-07-01/2022-08-31", "2023-07-01/2023-08-31", "cloud cover <= 10%", "max_cloud_cover"):
        assert part in msg


def test_cli_search_against_rustac(stac_api: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pixeldino.cli import main

    out = tmp_path / "manifest.json"
    assert (
        main(
            [
                "search",
                "--catalog",
                stac_api,
                "--collection",
                "sentinel-2-l1c",
                "--bands",
                "B02,B03,B04,B08",
                "--datetime",
                "2021-07-01/2021-08-31",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    manifest = read_manifest(out)
    assert [s["tile"] for s in manifest["scenes"]] == ["08WMA", "52WEE"]
    assert "S2_08WMA_20210821" in capsys.readouterr().out


def test_http_fetch_is_pixel_identical_to_local(stac_api: str, range_server: RangeServer, tmp_path: Path) -> None:
    remote = search(stac_api, collection="sentinel-2-l1c", tiles=["08WMA"], bands=PEEL)["scenes"][0]
    local = search(DEMO_STAC / "catalog.json", tiles=["08WMA"], bands=PEEL)["scenes"][0]
    start = len(range_server.log)
    a = fetch_scene(remote, PEEL, tmp_path / "http" / "peel.tif")
    b = fetch_scene(local, PEEL, tmp_path / "local" / "peel.tif")
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        assert ra.profile == rb.profile and ra.descriptions == rb.descriptions == tuple(PEEL)
        assert np.array_equal(ra.read(), rb.read())
    ranged = [r for r in range_server.log[start:] if r[2] is not None]
    assert ranged, "GDAL did not use range requests"
    sidecar = json.loads(a.with_suffix(".json").read_text())
    assert sidecar["hrefs"]["B02"].startswith(range_server.url)
    assert sidecar["provider"] == "custom" and sidecar["quality_mask"] is None


def test_transient_http_errors_are_retried(stac_api: str, range_server: RangeServer, tmp_path: Path) -> None:
    scene = search(stac_api, collection="sentinel-2-l1c", tiles=["52WEE"], bands=["B11"])["scenes"][0]
    path = "/S2_52WEE_20210721/B11.tif"
    range_server.fail_next(path, 2)
    out = fetch_scene(scene, ["B11"], tmp_path / "byk.tif")
    failures = Counter(p for _, p, _ in range_server.log)
    assert failures[path] >= 3  # two 503s, then the reads that succeeded
    with rasterio.open(out) as ds, rasterio.open(DEMO_STAC / "sentinel-2-l1c" / "S2_52WEE_20210721" / "B11.tif") as src:
        assert np.array_equal(ds.read(1), src.read(1))


def test_missing_remote_asset_is_one_line_and_leaves_nothing(
    stac_api: str, range_server: RangeServer, tmp_path: Path
) -> None:
    scene = copy.deepcopy(search(stac_api, collection="sentinel-2-l1c", tiles=["08WMA"], bands=PEEL[:2])["scenes"][0])
    scene["assets"]["B03"] = f"{range_server.url}/S2_08WMA_20210821/B03_gone.tif"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(InputError) as err:
        fetch_scene(scene, PEEL[:2], out_dir / "scene.tif")
    msg = str(err.value)
    assert "\n" not in msg and "band B03" in msg and "B03_gone.tif" in msg
    assert list(out_dir.iterdir()) == []


def test_429_with_retry_after_is_waited_out(stac_api: str, range_server: RangeServer, tmp_path: Path) -> None:
    """A provider's rate limit: the first request is answered 429 with Retry-After: 1, then the file is served."""
    scene = search(stac_api, collection="sentinel-2-l1c", tiles=["52WEE"], bands=["B12"])["scenes"][0]
    path = "/S2_52WEE_20210721/B12.tif"
    range_server.throttle_next(path, 1, 429, "1")
    out = fetch_scene(scene, ["B12"], tmp_path / "byk.tif")
    answers = range_server.answers_for(path)
    assert [a[3] for a in answers].count(429) == 1 and answers[0][3] == 429
    assert answers[1][0] - answers[0][0] >= 1.0  # the next request came no sooner than the server asked
    with rasterio.open(out) as ds, rasterio.open(DEMO_STAC / "sentinel-2-l1c" / "S2_52WEE_20210721" / "B12.tif") as src:
        assert np.array_equal(ds.read(1), src.read(1))


def test_503_during_block_reads_is_retried_by_pixeldino(
    stac_api: str, range_server: RangeServer, tmp_path: Path
) -> None:
    scene = search(stac_api, collection="sentinel-2-l1c", tiles=["52WEE"], bands=["B08"])["scenes"][0]
    path = "/S2_52WEE_20210721/B08.tif"  # larger than GDAL's first read: its blocks come in later range requests
    range_server.throttle_next(path, 2, 503, "0", ranged_reads_only=True)
    out = fetch_scene(scene, ["B08"], tmp_path / "byk.tif")
    statuses = [a[3] for a in range_server.answers_for(path)]
    assert statuses.count(503) == 2 and statuses[-1] == 200
    with rasterio.open(out) as ds, rasterio.open(DEMO_STAC / "sentinel-2-l1c" / "S2_52WEE_20210721" / "B08.tif") as src:
        assert np.array_equal(ds.read(1), src.read(1))
