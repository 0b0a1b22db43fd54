"""Fetching weights: the real download code against a local stand-in for the Hub and for GitHub.

Nothing here leaves 127.0.0.1: HF_ENDPOINT points huggingface_hub at tests/hub_server.py, and the
manifest (UPSCALE_MANIFEST) is the real one with its sources rewritten to that server. The served
files are the official checkpoints in ../shared/weights.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli
from hub_server import HubServer

from upscale import cache, download, manifest, weights
from upscale.errors import UpscaleError

REV = "0123456789abcdef0123456789abcdef01234567"  # a pinned (full) revision


@pytest.fixture
def server():
    with HubServer() as srv:
        yield srv


@pytest.fixture
def hub(shared, server, tmp_path, monkeypatch):
    """Server with the official files, a manifest pointing at it, and a private cache; returns the server."""
    w = shared / "weights"
    server.add_hub_file("test/vapsr", "weights/VapSR-S.pth", w / "VapSR-S.pth")
    server.add_hub_file("test/data", "a2n/aan_x2.pt", w / "aan_x2.pt", repo_type="dataset")
    server.add_hub_file("test/a2n", "other.pt", b"not the wanted file")
    urls = {name: server.add_url_file(name, w / name) for name in ("VapSR_X4.pth", "VapSR_X2.pth", "aan_x3.pt")}
    urls["nosha"] = server.add_url_file("aan_x2_nosha.pt", w / "aan_x2.pt")

    data = json.loads(manifest.PACKAGED.read_text())
    models = data["models"]
    models["vapsr"]["files"]["4"]["sources"] = [{"url": urls["VapSR_X4.pth"]}]
    models["vapsr"]["files"]["2"]["sources"] = [{"url": urls["VapSR_X2.pth"]}]
    models["vapsr-s"]["files"]["4"]["sources"] = [
        {"repo_id": "test/vapsr", "repo_type": "model", "filename": "weights/VapSR-S.pth", "revision": "main"}
    ]
    models["a2n"]["files"]["2"]["sources"] = [
        {"repo_id": "test/data", "repo_type": "dataset", "filename": "a2n/aan_x2.pt", "revision": REV}
    ]
    models["a2n"]["files"]["3"]["sources"] = [  # the first source lacks the file: the second is used
        {"repo_id": "test/a2n", "repo_type": "model", "filename": "aan_x3.pt", "revision": "main"},
        {"url": urls["aan_x3.pt"]},
    ]
    # like the A2N x4 file: no digest or size known in the manifest
    models["a2n"]["files"]["4"] = {"filename": "aan_x2_nosha.pt", "sources": [{"url": urls["nosha"]}]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))

    env = {
        "UPSCALE_MANIFEST": str(path),
        "UPSCALE_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_ENDPOINT": server.endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "RETRY_WAITS", (0.0, 0.0, 0.0))
    server.env = env
    server.urls = urls
    server.requests.clear()
    return server


def cache_files(root: Path) -> list[str]:
    """Every file in the cache except lock files (which say nothing about content)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def sha(path: Path) -> str:
    return download.sha256_file(path)


# ---- plain URLs ---------------------------------------------------------------------------------------


def test_url_download_then_cached_run_makes_no_request(hub, capsys):
    path = weights.resolve_checkpoint("vapsr", 4)
    v = manifest.resolve("vapsr", 4)
    assert sha(path) == v.sha256 and path == cache.cache_dir() / "vapsr" / "VapSR_X4.pth"
    assert hub.requests == [("GET", "hub:/files/VapSR_X4.pth")]
    assert "verified vapsr x4" in capsys.readouterr().err
    hub.requests.clear()
    assert weights.resolve_checkpoint("vapsr", 4) == path
    assert hub.requests == []
    assert cache.cached_path(v) == path


def test_corrupt_download_is_rejected_and_not_kept(hub):
    hub.corrupt.add("files/VapSR_X4.pth")  # same size, wrong bytes
    with pytest.raises(UpscaleError, match=r"sha256 .* not the manifest's .*deleted"):
        weights.resolve_checkpoint("vapsr", 4)
    assert cache_files(cache.cache_dir()) == []
    hub.corrupt.clear()
    assert sha(weights.resolve_checkpoint("vapsr", 4)) == manifest.resolve("vapsr", 4).sha256


def test_wrong_size_is_refused_before_the_transfer(hub):
    hub.url_files["VapSR_X4.pth"] = hub.url_files["VapSR_X2.pth"]
    with pytest.raises(UpscaleError, match="offers 2785249 bytes but VapSR_X4.pth should have 2896561"):
        weights.resolve_checkpoint("vapsr", 4)
    assert cache_files(cache.cache_dir()) == []


def test_cut_off_transfer_keeps_its_part_and_the_next_run_resumes_it(hub):
    hub.cut["files/VapSR_X4.pth"] = 99  # every attempt dies half way
    with pytest.raises(UpscaleError, match="failed after 4 attempts"):
        weights.resolve_checkpoint("vapsr", 4)
    store = cache.cache_dir() / "vapsr"
    parts = [p.name for p in store.iterdir() if p.name.endswith(".part")]
    assert len(parts) == 1 and parts[0].startswith(".VapSR_X4.pth.")  # hidden, never taken as the file
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == []  # no file, no record
    have = (store / parts[0]).stat().st_size
    assert have > 0
    hub.cut.clear()
    hub.ranges.clear()
    assert sha(weights.resolve_checkpoint("vapsr", 4)) == manifest.resolve("vapsr", 4).sha256
    assert hub.ranges == [f"bytes={have}-"]  # continued where the last run stopped, not from zero
    assert cache_files(cache.cache_dir()) == ["vapsr/VapSR_X4.pth", "vapsr/VapSR_X4.pth.json"]


def test_interrupted_download_on_the_command_line_resumes_in_the_next_run(hub, tmp_path):
    """Ctrl-C (here SIGTERM, which the CLI treats the same) during a download keeps the bytes so far."""
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    hub.cut["files/VapSR_X4.pth"] = 99
    env = {**os.environ, **hub.env}
    code = ("import time, upscale.download as d\n"
            "d.RETRY_WAITS = (60.0,)\n"  # first attempt cut half way, then a long wait: interrupted in it
            "from upscale.cli import main\nmain()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "img.png"), "-m", "vapsr", "-s", "4"],
                            env=env, stderr=subprocess.PIPE)
    store = cache.cache_dir() / "vapsr"
    deadline = time.monotonic() + 120
    while b"retrying in 60 s" not in (err := _peek(proc)):
        assert proc.poll() is None and time.monotonic() < deadline, err
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest.decode()
    (part,) = [p for p in store.iterdir() if p.name.endswith(".part")]
    have = part.stat().st_size
    hub.cut.clear()
    hub.ranges.clear()
    again = run_cli(tmp_path / "img.png", "-m", "vapsr", "-s", "4", env=hub.env)
    assert again.returncode == 0, again.stderr.decode()
    assert "resuming VapSR_X4.pth after" in again.stderr.decode() and hub.ranges == [f"bytes={have}-"]
    assert not part.exists()


_PEEKED: dict[int, bytes] = {}


def _peek(proc) -> bytes:
    """What the process has written on stderr so far (non-blocking)."""
    import select

    buf = _PEEKED.setdefault(proc.pid, b"")
    if select.select([proc.stderr], [], [], 0.1)[0]:
        chunk = os.read(proc.stderr.fileno(), 65536)
        buf += chunk
        _PEEKED[proc.pid] = buf
    return buf


def test_cut_off_transfer_resumes_with_a_range_request(hub):
    hub.cut["files/VapSR_X4.pth"] = 1
    path = weights.resolve_checkpoint("vapsr", 4)
    assert sha(path) == manifest.resolve("vapsr", 4).sha256
    assert hub.ranges == [f"bytes={2896561 // 2}-"]


def test_a_partial_file_that_does_not_verify_is_downloaded_again_from_the_start(hub, capsys):
    store = cache.cache_dir() / "vapsr"
    store.mkdir(parents=True)
    (store / ".VapSR_X4.pth.1234abcd.part").write_bytes(b"half a file")  # not a prefix of the real file
    path = weights.resolve_checkpoint("vapsr", 4)
    assert sha(path) == manifest.resolve("vapsr", 4).sha256
    assert hub.ranges == ["bytes=11-"]  # tried once, then from zero
    assert "did not verify: starting again" in capsys.readouterr().err
    assert cache_files(cache.cache_dir()) == ["vapsr/VapSR_X4.pth", "vapsr/VapSR_X4.pth.json"]


def test_changed_cached_file_is_detected_and_replaced(hub, capsys):
    path = weights.resolve_checkpoint("vapsr", 4)
    with open(path, "r+b") as f:  # damage it in place
        f.write(b"\0" * 16)
    hub.requests.clear()
    assert sha(weights.resolve_checkpoint("vapsr", 4)) == manifest.resolve("vapsr", 4).sha256
    assert "warning: cached vapsr x4" in capsys.readouterr().err
    assert hub.requests == [("GET", "hub:/files/VapSR_X4.pth")]


def test_unknown_digest_is_recorded_once_and_then_enforced(hub, capsys):
    path = weights.resolve_checkpoint("a2n", 4)
    err = capsys.readouterr().err
    assert "no sha256 is known for a2n x4" in err
    record = json.loads((path.parent / f"{path.name}.json").read_text())
    assert record["sha256"] == sha(path) and record["digest_from"] == "first download"
    hub.requests.clear()
    assert weights.resolve_checkpoint("a2n", 4) == path
    assert hub.requests == [] and "no sha256" not in capsys.readouterr().err
    # upstream changes the file; the cached copy is gone: the new download is refused
    path.unlink()
    hub.url_files["aan_x2_nosha.pt"] = hub.url_files["aan_x3.pt"]
    with pytest.raises(UpscaleError, match="not the one recorded at its first download"):
        weights.resolve_checkpoint("a2n", 4)
    assert not path.exists()


# ---- the Hub ------------------------------------------------------------------------------------------


def test_hub_download_then_cached_run_makes_no_request(hub):
    path = weights.resolve_checkpoint("vapsr-s", 4)
    v = manifest.resolve("vapsr-s", 4)
    assert sha(path) == v.sha256
    repo = cache.hub_cache_dir() / "models--test--vapsr"
    assert path.is_relative_to(repo / "snapshots") and (repo / "blobs" / v.sha256).is_file()
    assert (repo / "refs" / "main").is_file()  # huggingface_hub's own layout
    assert ("HEAD", "hub:/test/vapsr/resolve/main/weights/VapSR-S.pth") in hub.requests
    assert ("GET", f"cdn:/blobs/{v.sha256}") in hub.requests
    hub.requests.clear()
    assert weights.resolve_checkpoint("vapsr-s", 4) == path
    assert hub.requests == []


def test_dataset_repo_with_a_pinned_revision(hub):
    path = weights.resolve_checkpoint("a2n", 2)
    assert sha(path) == manifest.resolve("a2n", 2).sha256
    assert hub.requests[0] == ("HEAD", f"hub:/datasets/test/data/resolve/{REV}/a2n/aan_x2.pt")
    assert path == cache.hub_cache_dir() / "datasets--test--data" / "snapshots" / REV / "a2n" / "aan_x2.pt"


def test_second_source_is_used_when_the_first_fails(hub):
    path = weights.resolve_checkpoint("a2n", 3)
    assert sha(path) == manifest.resolve("a2n", 3).sha256
    assert ("HEAD", "hub:/test/a2n/resolve/main/aan_x3.pt") in hub.requests  # tried first: 404


def test_corrupt_hub_file_is_rejected_and_removed(hub):
    v = manifest.resolve("vapsr-s", 4)
    hub.corrupt.add("model:test/vapsr/weights/VapSR-S.pth")
    with pytest.raises(UpscaleError, match="sha256 .* not the manifest's"):
        weights.resolve_checkpoint("vapsr-s", 4)
    leftovers = [f for f in cache_files(cache.cache_dir()) if "/blobs/" in f or "/snapshots/" in f]
    assert leftovers == [] and cache.cached_path(v) is None
    hub.corrupt.clear()
    assert sha(weights.resolve_checkpoint("vapsr-s", 4)) == v.sha256


def test_hub_transfer_cut_off(hub, monkeypatch):
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd.time, "sleep", lambda s: None)  # huggingface_hub waits 1 s before resuming
    v = manifest.resolve("vapsr-s", 4)
    key = "model:test/vapsr/weights/VapSR-S.pth"
    hub.cut[key] = 1000
    with pytest.raises(UpscaleError):
        weights.resolve_checkpoint("vapsr-s", 4)
    assert [f for f in cache_files(cache.cache_dir()) if "/blobs/" in f or f.endswith(".json")] == []
    hub.cut[key] = 1  # once: huggingface_hub resumes it
    assert sha(weights.resolve_checkpoint("vapsr-s", 4)) == v.sha256


# ---- offline --------------------------------------------------------------------------------------------


def test_offline_without_a_cached_file_says_what_to_do(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UpscaleError) as exc:
        weights.resolve_checkpoint("vapsr", 4)
    msg = str(exc.value)
    assert "VapSR_X4.pth" in msg and "offline" in msg and "upscale download vapsr -s 4" in msg
    with pytest.raises(UpscaleError, match="HAT_SRx2.pth"):
        weights.resolve_checkpoint("hat", 2, offline=True)
    assert hub.requests == []


def test_offline_with_cached_files(hub, monkeypatch):
    url_path = weights.resolve_checkpoint("vapsr", 4)
    hub_path = weights.resolve_checkpoint("vapsr-s", 4)
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.resolve_checkpoint("vapsr", 4) == url_path
    assert weights.resolve_checkpoint("vapsr-s", 4, offline=True) == hub_path
    # a Hub file whose record was lost is still found in the Hub cache, and verified
    (cache.cache_dir() / "vapsr-s" / "VapSR-S.pth.json").unlink()
    assert weights.resolve_checkpoint("vapsr-s", 4, offline=True) == hub_path
    assert hub.requests == []


# ---- --weights URL and hf:// --------------------------------------------------------------------------------


def test_weights_url_and_hf_addresses(hub):
    url = hub.urls["VapSR_X2.pth"]
    p1 = weights.resolve_checkpoint(None, None, url)
    p2 = weights.resolve_checkpoint(None, None, "hf://test/vapsr/weights/VapSR-S.pth@main")
    p3 = weights.resolve_checkpoint(None, None, f"hf://datasets/test/data/a2n/aan_x2.pt@{REV}")
    assert [sha(p) for p in (p1, p2, p3)] == [manifest.resolve(*k).sha256 for k in
                                              (("vapsr", 2), ("vapsr-s", 4), ("a2n", 2))]
    hub.requests.clear()
    assert weights.resolve_checkpoint(None, None, url) == p1
    assert weights.resolve_checkpoint(None, None, "hf://test/vapsr/weights/VapSR-S.pth@main") == p2
    assert hub.requests == []
    # with -m, a URL that is one of the model's sources is checked against the manifest's digest
    hub.corrupt.add("files/VapSR_X2.pth")
    with pytest.raises(UpscaleError, match="not the manifest's"):
        weights.resolve_checkpoint("vapsr", None, url)


def test_hf_address_parsing():
    assert weights.parse_hf_uri("hf://o/r/a/b.pth") == {
        "repo_id": "o/r", "repo_type": "model", "filename": "a/b.pth", "revision": "main"}
    assert weights.parse_hf_uri("hf://datasets/o/r/b.pth@v1.0")["repo_type"] == "dataset"
    with pytest.raises(UpscaleError, match="hf://OWNER/REPO/PATH"):
        weights.parse_hf_uri("hf://o/r")


def test_local_weights_path_is_returned_as_is(tmp_path):
    assert weights.resolve_checkpoint("vapsr", 4, tmp_path / "mine.pth") == tmp_path / "mine.pth"


# ---- registering a file you downloaded yourself ----------------------------------------------------------


def test_register_checks_digest_and_family(hub, shared):
    w = shared / "weights"
    with pytest.raises(UpscaleError, match="not the expected file"):
        weights.register_file("vapsr", 2, w / "VapSR_X3.pth")
    path = weights.register_file("vapsr", 2, w / "VapSR_X2.pth")
    assert weights.resolve_checkpoint("vapsr", 2, offline=True) == path
    with pytest.raises(UpscaleError):  # no digest known for PANet: a VapSR file is refused by its keys
        weights.register_file("panet", 4, w / "VapSR_X4.pth")
    assert cache.cached_path(manifest.resolve("panet", 4)) is None
    assert hub.requests == []


# ---- the command line --------------------------------------------------------------------------------------


def test_models_json_parses_and_shows_the_cache(hub):
    weights.resolve_checkpoint("vapsr", 4)
    proc = run_cli("models", "--json", env=hub.env)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = json.loads(proc.stdout)
    names = {r["name"] for r in rows}
    assert {"a2n", "vapsr", "vapsr-s", "hat", "hat-s", "hat-l", "real-hat-gan", "panet"} <= names
    row = next(r for r in rows if (r["name"], r["scale"]) == ("vapsr", 4))
    assert row["cached"] is True and row["parameters"] == 342220 and row["size"] == 2896561
    assert all(not r["cached"] for r in rows if r["name"] != "vapsr")
    table = run_cli("models", env=hub.env)
    assert table.returncode == 0 and b"real-hat-gan" in table.stdout


def test_panet_explains_where_to_get_the_weights(hub, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    proc = run_cli(tmp_path / "img.png", "-m", "panet", env=hub.env)
    assert_one_line_error(proc, "drive.google.com", "upscale download panet -s 4 --from model_x4.pt")


def test_offline_cli_one_line(hub, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    proc = run_cli(tmp_path / "img.png", "-m", "hat", "-s", "3", "--offline", env=hub.env)
    assert_one_line_error(proc, "HAT_SRx3.pth", "upscale download hat -s 3")
    assert hub.requests == []


def test_download_command(hub, shared):
    proc = run_cli("download", "vapsr", "-s", "4", "-q", env=hub.env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert Path(proc.stdout.decode().strip()) == cache.cache_dir() / "vapsr" / "VapSR_X4.pth"
    proc = run_cli("download", "vapsr", "-s", "2", "--from", shared / "weights" / "VapSR_X2.pth", env=hub.env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert hub.requests == [("GET", "hub:/files/VapSR_X4.pth")]


def test_end_to_end_download_verify_upscale_then_offline_speed(hub, tmp_path):
    from PIL import Image

    Image.new("RGB", (12, 10), (200, 100, 50)).save(tmp_path / "img.png")
    first = run_cli(tmp_path / "img.png", "-m", "vapsr", "-s", "4", env=hub.env)
    assert first.returncode == 0, first.stderr.decode()
    assert "verified vapsr x4" in first.stderr.decode()
    assert Image.open(tmp_path / "img_x4.png").size == (48, 40)
    assert hub.requests == [("GET", "hub:/files/VapSR_X4.pth")]
    hub.requests.clear()
    env = {**hub.env, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    second = run_cli(tmp_path / "img.png", "-m", "vapsr", "-s", "4", "-o", tmp_path / "again.png", env=env)
    assert second.returncode == 0, second.stderr.decode()
    assert hub.requests == [] and "verified" not in second.stderr.decode()
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "img_x4.png").read_bytes()


def test_weights_hf_address_on_the_command_line(hub, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    proc = run_cli(tmp_path / "img.png", "--weights", "hf://test/vapsr/weights/VapSR-S.pth@main",
                   "-o", tmp_path / "out.png", "-q", env=hub.env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert Image.open(tmp_path / "out.png").size == (32, 32)
    assert any(path.startswith("cdn:/blobs/") for _, path in hub.requests)



def test_models_command_does_not_import_torch(hub):
    import subprocess
    import sys

    code = ("import sys\nfrom upscale.cli import main\ntry:\n    main(['models', '--json'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, env={**os.environ, **hub.env})
    assert proc.stderr.decode().strip().splitlines()[-1] == "False", proc.stderr.decode()
    assert json.loads(proc.stdout)


# ---- no network -------------------------------------------------------------------------------------------

# Five labels of 63 characters: over the 253-character limit of a DNS name, so the C library refuses to
# resolve it locally (EAI_NONAME) and no query leaves the machine.
UNRESOLVABLE = ".".join(["a" * 63] * 5)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once it is closed


@pytest.fixture
def no_network(hub, tmp_path, monkeypatch):
    """The hub fixture's manifest with every source unreachable: vapsr x4 on an unresolvable host, a2n x3 on
    a refused Hub endpoint then the unresolvable host; real retry waits (nothing here may wait for them)."""
    data = json.loads(Path(hub.env["UPSCALE_MANIFEST"]).read_text())
    models = data["models"]
    models["vapsr"]["files"]["4"]["sources"] = [{"url": f"https://{UNRESOLVABLE}/VapSR_X4.pth"}]
    models["a2n"]["files"]["3"]["sources"][1] = {"url": f"https://{UNRESOLVABLE}/aan_x3.pt"}
    Path(hub.env["UPSCALE_MANIFEST"]).write_text(json.dumps(data))
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(download, "RETRY_WAITS", (1.0, 3.0, 8.0))
    return {**hub.env, "HF_ENDPOINT": endpoint}


def test_unreachable_hosts_fail_at_once_with_what_to_do(no_network, capsys):
    import time

    start = time.monotonic()
    with pytest.raises(UpscaleError) as url_only:
        weights.resolve_checkpoint("vapsr", 4)
    with pytest.raises(UpscaleError) as two_sources:
        weights.resolve_checkpoint("a2n", 3)
    assert time.monotonic() - start < 10  # no retries: the waits alone would take 12 s per source
    msg = str(url_only.value)
    assert "cannot resolve the host name aaa" in msg and "upscale download vapsr -s 4 --from VapSR_X4.pth" in msg
    assert "HTTPS_PROXY" in msg and "--offline" in msg and "\n" not in msg
    msg = str(two_sources.value)
    assert "127.0.0.1 refused the connection" in msg and "cannot resolve the host name" in msg
    assert "upscale download a2n -s 3 --from aan_x3.pt" in msg and msg.endswith("run with --offline")
    err = capsys.readouterr().err
    assert "Retrying" not in err and "thrown while requesting" not in err and "retrying" not in err
    assert cache_files(cache.cache_dir()) == []


def test_unreachable_hub_on_the_command_line_is_one_line_even_with_q(no_network, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    proc = run_cli(tmp_path / "img.png", "-m", "a2n", "-s", "3", "-q", env=no_network)
    line = assert_one_line_error(proc, "cannot download a2n x3", "refused the connection", "--offline",
                                 "upscale download a2n -s 3 --from aan_x3.pt", "HTTPS_PROXY")
    assert line.endswith("run with --offline") and proc.returncode == 1


def test_retries_are_announced(hub, capsys):
    hub.cut["files/VapSR_X4.pth"] = 1
    weights.resolve_checkpoint("vapsr", 4)
    err = capsys.readouterr().err
    assert "connection closed after" in err and "retrying in 0 s (attempt 2 of 4)" in err


# ---- the progress bar --------------------------------------------------------------------------------------


class _Terminal:
    """stderr as a terminal: what ByteBar needs to draw (into memory here)."""

    def __init__(self):
        import io

        self.text = io.StringIO()

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name):
        return getattr(self.text, name)


@pytest.fixture
def bar_updates(monkeypatch):
    """Every ByteBar.update (plain URLs and the Hub's bar alike) as (monotonic time, bytes)."""
    import time

    calls: list[tuple[float, int]] = []
    real = download.ByteBar.update

    def update(self, n):
        calls.append((time.monotonic(), n))
        real(self, n)

    monkeypatch.setattr(download.ByteBar, "update", update)
    return calls


@pytest.mark.parametrize("path", ["url", "hub"])
def test_the_bar_moves_in_small_steps_on_a_slow_link(hub, tmp_path, bar_updates, path):
    """At 2 MB/s the bar advances every few hundredths of a second, by at most STEP: before, Hub files
    advanced once per 10 MiB (a 3 MB file in one jump at the end) and URLs once per MiB."""
    import huggingface_hub.constants

    data = os.urandom(3_000_000)
    hub.rate = 2e6
    if path == "url":
        url = hub.add_url_file("slow.pth", data)
        download.fetch_url(url, tmp_path / "slow.part", expected_size=len(data))
    else:
        hub.add_hub_file("test/slow", "slow.pth", data)
        source = {"repo_id": "test/slow", "filename": "slow.pth", "revision": "main"}
        its_own = huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
        assert download.fetch_hub(source, tmp_path / "hub").read_bytes() == data
        assert huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE == its_own  # put back after
    sizes = [n for _, n in bar_updates]
    assert sum(sizes) == len(data) and max(sizes) <= download.STEP
    times = [t for t, _ in bar_updates]
    # the longest wait between steps is that of one STEP at 2 MB/s (33 ms), a second with a loaded machine
    assert max(b - a for a, b in itertools.pairwise(times)) < 1.0


def test_the_bar_hands_rich_at_most_one_sample_per_interval(monkeypatch):
    """Reads arrive by the hundred a second; rich gets their sum every BAR_SAMPLE_S, so its speed is an
    average over its 30 s window rather than over its last 1000 packets."""
    import time

    from rich.progress import Progress

    advanced: list[tuple[float, float]] = []
    real = Progress.advance

    def advance(self, task, n=1):
        advanced.append((time.monotonic(), n))
        real(self, task, n)

    monkeypatch.setattr(Progress, "advance", advance)
    monkeypatch.setattr(download.sys, "stderr", _Terminal())
    with download.ByteBar("test", total=200 * 1000) as bar:
        for _ in range(200):
            bar.update(1000)
            time.sleep(0.002)
        assert bar.n == 200 * 1000
    assert sum(n for _, n in advanced) == 200 * 1000  # what was pending is handed over on close
    times = [t for t, _ in advanced[:-1]]  # the last one: at close
    assert len(advanced) < 200 and all(b - a > download.BAR_SAMPLE_S - 0.01 for a, b in itertools.pairwise(times))


def test_the_hub_bar_is_what_xet_downloads_drive(monkeypatch):
    """Xet-stored Hub files report through XetDownloadProgressReporter, which uses more of tqdm than
    update: one bar (not two rich bars at once), its total set, its postfixes taken."""
    from types import SimpleNamespace

    reporting = pytest.importorskip("huggingface_hub.utils._xet_progress_reporting")
    monkeypatch.setattr(download.sys, "stderr", _Terminal())
    made: list[download.ByteBar] = []
    cls = download._hub_bar_class(False, "big.pth from the Hub")

    def init(self, *args, **kwargs):
        made.append(self)
        download._HubBar.__init__(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)
    with reporting.XetDownloadProgressReporter(reconstruction_desc="r", transfer_desc="t", total=None, log_level=30,
                                               tqdm_class=cls) as progress:
        for done in (0, 400, 1000):
            progress.update_progress(SimpleNamespace(
                total_bytes=1000, total_bytes_completed=done, total_bytes_completion_rate=1e6,
                total_transfer_bytes_completed=done // 2, total_transfer_bytes_completion_rate=5e5))
        assert len(made) == 1 and made[0].total == 1000 and made[0].n == 1000
    assert made[0]._progress is None  # closed


# ---- a read-only cache -----------------------------------------------------------------------------------


def _simulate_read_only(monkeypatch, root: Path):
    """Every write under `root` fails as on a read-only file system (we run as root, so chmod cannot)."""
    import errno

    import filelock

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    real_mkdir = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refuse() if self.is_relative_to(root)
                        else real_mkdir(self, *a, **k))
    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    monkeypatch.setattr(cache, "write_record", refuse)


def test_read_only_cache_in_process(hub, monkeypatch):
    path = weights.resolve_checkpoint("vapsr", 4)
    root = cache.cache_dir()
    hub.requests.clear()
    _simulate_read_only(monkeypatch, root)
    assert weights.resolve_checkpoint("vapsr", 4) == path  # verified and unchanged: no lock, no write
    os.utime(path, (1e9, 1e9))  # touched (a copy, a restore): checked by its digest, nothing recorded
    assert weights.resolve_checkpoint("vapsr", 4) == path
    with pytest.raises(UpscaleError) as exc:
        weights.resolve_checkpoint("vapsr", 2)  # not in it
    msg = str(exc.value)
    assert "cannot be written (Read-only file system)" in msg and "does not hold vapsr x2" in msg
    assert "UPSCALE_CACHE_DIR" in msg and "--weights" in msg
    assert hub.requests == []


def _read_only_mount_possible(folder: Path) -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    cmd = f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}'"
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, check=False).returncode == 0


def test_read_only_cache_on_a_read_only_mount(hub, tmp_path):
    """The real thing where this machine allows it (root with mount namespaces): the cache folder
    bind-mounted read-only, one run with the verified file in it, one with an empty cache."""
    import shlex
    import subprocess
    import sys

    from PIL import Image

    full, empty = tmp_path / "full-cache", tmp_path / "empty-cache"
    empty.mkdir()
    if not _read_only_mount_possible(empty):
        pytest.skip("no read-only bind mounts here (needs unshare -m and mount)")
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    assert run_cli("download", "vapsr", "-s", "4", "-q", env={**hub.env, "UPSCALE_CACHE_DIR": str(full)}).returncode == 0

    def read_only_run(cache_root: Path, out: str) -> subprocess.CompletedProcess:
        upscale = shlex.join([sys.executable, "-m", "upscale", str(tmp_path / "img.png"), "-m", "vapsr", "-s", "4",
                              "-o", str(tmp_path / out)])
        cmd = (f"mount --bind '{cache_root}' '{cache_root}' && mount -o remount,bind,ro '{cache_root}' && "
               f"exec {upscale}")
        return subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, check=False, timeout=300,
                              env={**os.environ, **hub.env, "UPSCALE_CACHE_DIR": str(cache_root)})

    hub.requests.clear()
    ok = read_only_run(full, "a.png")
    assert ok.returncode == 0, ok.stderr.decode()
    assert Image.open(tmp_path / "a.png").size == (32, 32) and hub.requests == []
    refused = read_only_run(empty, "b.png")
    assert_one_line_error(refused, "cannot be written (Read-only file system)", "UPSCALE_CACHE_DIR")
    assert not (tmp_path / "b.png").exists()
