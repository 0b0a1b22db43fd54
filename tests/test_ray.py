"""`upscale --ray`: the same job on Ray Data gives the same bytes as a local run.

One local Ray for the whole session (127.0.0.1 only, 2 CPUs); the CLI joins it with `--ray auto` (RAY_ADDRESS),
library calls use it directly. Each Ray run starts its workers (a torch import each), so a few runs cover
many cases each. Without `ray` these tests skip (CI installs the extra and sets UPSCALE_REQUIRE_RAY=1,
which turns the skip into a failure); planning and the missing-extra message need no Ray.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from conftest import random_state_dict
from PIL import Image

from upscale import distributed
from upscale.errors import UsageError

HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray for the session, started as `--ray local` starts one; its address, for CLI runs
    (`--ray auto` with RAY_ADDRESS)."""
    if not HAVE_RAY:
        msg = "ray is not installed: pip install -e '.[ray]' to run the Ray tests"
        if os.environ.get("UPSCALE_REQUIRE_RAY") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    assert distributed.connect(distributed.LOCAL, num_cpus=2)  # as `--ray local` starts it (imports ray)
    import ray

    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, layouts):
    path = tmp_path_factory.mktemp("w") / "tiny_vapsr.pth"
    torch.save({"params_ema": random_state_dict(layouts["vapsr-s_x4"])}, path)
    return path


def noise(shape, seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=np.uint64).astype(dtype)


def _folder(root: Path) -> Path:
    """RGB, RGBA, 16-bit colour, gray, a corrupt file, and a sub-folder."""
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(noise((10, 12, 3))).save(src / "rgb.png")
    rgba = noise((8, 9, 4), 1)
    rgba[:4, :, 3] = 0
    Image.fromarray(rgba).save(src / "rgba.png")
    _, buf = cv2.imencode(".png", noise((7, 6, 3), 2, np.uint16))
    (src / "deep16.png").write_bytes(buf.tobytes())
    Image.fromarray(noise((9, 7), 3)).save(src / "sub" / "gray.jpg", quality=90)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return src


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(stdout: bytes) -> dict[str, dict]:
    rows = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    return {Path(r["input"]).name: r for r in rows}


def _ray_env(address: str) -> dict[str, str]:
    return {"RAY_ADDRESS": address}


# ---- on Ray -----------------------------------------------------------------------------------------


def test_local_ray_listens_on_loopback_only(ray_address):
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    ours = _descendants(os.getpid())  # this session's gcs_server, raylet and workers
    listing = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in listing.splitlines() if {int(p) for p in re.findall(r"pid=(\d+)", line)} & ours]
    assert len(mine) >= 2, listing  # the GCS and the raylet at least
    loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
    assert all(line.split()[3].startswith(loopback) for line in mine), "\n".join(mine)


def test_no_local_ray_on_every_interface_when_ray_was_imported_first(ray_address):
    code = "import ray\nfrom upscale import distributed\ndistributed.connect('local')"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode != 0 and "listen on every network interface" in proc.stderr, proc.stderr


def _descendants(root: int) -> set[int]:
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        children = [c for c, p in parent.items() if p == pid and c not in found]
        found.update(children)
        todo += children
    return found


def test_same_bytes_as_a_local_run_and_a_bad_file_reported(ray_address, tiny_weights, tmp_path):
    src = _folder(tmp_path)
    common = ("-r", "--weights", tiny_weights, "-m", "vapsr-s", "--device", "cpu", "--json")
    local = run_cli(src, "-o", tmp_path / "local", *common)
    assert local.returncode == 1, local.stderr.decode()  # the corrupt file
    on_ray = run_cli(src, "-o", tmp_path / "ray", *common, "--ray", "auto", env=_ray_env(ray_address))
    stderr = on_ray.stderr.decode()
    assert on_ray.returncode == 1, stderr
    assert "Traceback" not in stderr and "core_worker" not in stderr and "INFO" not in stderr, stderr  # no Ray noise
    rows = _rows(on_ray.stdout)
    assert set(rows) == {"rgb.png", "rgba.png", "deep16.png", "gray.jpg", "broken.png"}
    assert rows["broken.png"]["status"] == "failed" and "broken.png" in rows["broken.png"]["error"]
    assert all(r["status"] == "ok" and r["model"] == "vapsr-s" for n, r in rows.items() if n != "broken.png")
    assert "4 upscaled, 0 skipped, 1 failed" in stderr
    made = _files(tmp_path / "ray")
    assert sorted(made) == ["deep16_x4.png", "rgb_x4.png", "rgba_x4.png", "sub/gray_x4.png"]
    assert made == _files(tmp_path / "local")  # byte for byte: alpha, 16 bits and gray included


def test_real_vapsr_x2_to_a_file_uri(ray_address, shared, tmp_path):
    weights = shared / "weights" / "VapSR_X2.pth"
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(noise((20, 24, 3), 5)).save(src / "photo.png")
    rgba = noise((16, 16, 4), 6)
    rgba[:8, :, 3] = 0
    Image.fromarray(rgba).save(src / "cutout.png")
    local = run_cli(src, "-o", tmp_path / "local", "-m", "vapsr", "-s", "2", "--weights", weights, "--device", "cpu")
    assert local.returncode == 0, local.stderr.decode()

    settings = {"model": "vapsr", "scale": 2, "weights": str(weights), "device": "cpu"}
    assert distributed.check_settings(settings) == 2
    job = distributed.plan([f"file://{src}"], f"file://{tmp_path}/remote", tag="_x2")
    assert job.dest_fs is not None  # written through pyarrow's filesystem, as for s3:// or gs://
    results = list(distributed.run(settings, job))
    assert sorted((r.input, r.output, r.status) for r in results) == [
        (f"file://{src}/cutout.png", f"file://{tmp_path}/remote/cutout_x2.png", "ok"),
        (f"file://{src}/photo.png", f"file://{tmp_path}/remote/photo_x2.png", "ok"),
    ]
    assert _files(tmp_path / "remote") == _files(tmp_path / "local")


def test_an_interrupted_run_leaves_whole_files_and_a_rerun_resumes(ray_address, tiny_weights, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(12):
        Image.fromarray(noise((24, 24, 3), 20 + i)).save(src / f"img{i:02d}.png")
    settings = {"weights": str(tiny_weights), "model": "vapsr-s", "device": "cpu"}
    results = distributed.run(settings, distributed.plan([src], out, tag="_x4"))
    assert next(results).status == "ok"
    results.close()  # what Ctrl-C does to the job: the driver stops consuming, the generator unwinds
    for name in os.listdir(out):  # under a final name there is only ever a whole image
        if not name.startswith("."):
            assert Image.open(out / name).size == (96, 96)
    rest = distributed.plan([src], out, tag="_x4")
    assert len(rest.tasks) == 12 - sum(not n.startswith(".") for n in os.listdir(out))
    statuses = []
    for result in distributed.run(settings, rest):
        statuses.append(result.status)
        if len(statuses) == len(rest.planned) + 1 and len(rest.tasks) > 1:
            _kill_a_worker()  # Ray starts another one and hands the files of the dead one out again
    assert statuses.count("skipped") == len(rest.planned) and statuses.count("ok") == len(rest.tasks)  # the rest only
    assert sorted(os.listdir(out)) == [f"img{i:02d}_x4.png" for i in range(12)]  # and no temporary files left


def _kill_a_worker() -> None:
    for pid in sorted(_descendants(os.getpid())):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::MapWorker"):
            os.kill(pid, signal.SIGKILL)
            return
    raise AssertionError("no Ray worker process found")


# ---- without Ray ------------------------------------------------------------------------------------


def test_ray_without_the_extra_says_how_to_install_it(tiny_weights, tmp_path):
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    Image.fromarray(noise((6, 6, 3))).save(tmp_path / "a.png")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    proc = run_cli(tmp_path / "a.png", "--weights", tiny_weights, "--ray", "local", env={"PYTHONPATH": path})
    line = assert_one_line_error(proc, "pip install 'upscale[ray]'")
    assert proc.returncode == 2, line
    assert not (tmp_path / "a_x4.png").exists()


def test_uri_plans_follow_the_local_rules(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / ".hidden").mkdir()
    for name in ("a.png", "b.jpg", "sub/c.webp", ".hidden/d.png", ".e.png"):
        Image.new("RGB", (2, 2)).save(src / name)
    (src / "notes.txt").write_text("not an image")
    uri = f"file://{src}"
    flat = distributed.plan([uri], f"file://{tmp_path}/out", tag="_x4")
    assert [Path(t.write).name for t in flat.tasks] == ["a_x4.png", "b_x4.png"]
    deep = distributed.plan([uri], f"file://{tmp_path}/out/", recursive=True, tag="-big", fmt="jpg")
    assert [(t.label, t.output_label, t.fmt) for t in deep.tasks] == [
        (f"{uri}/a.png", f"file://{tmp_path}/out/a-big.jpg", "jpg"),
        (f"{uri}/b.jpg", f"file://{tmp_path}/out/b-big.jpg", "jpg"),
        (f"{uri}/sub/c.webp", f"file://{tmp_path}/out/sub/c-big.jpg", "jpg"),
    ]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_x4.png").write_bytes(b"done before")
    resumed = distributed.plan([uri], f"file://{tmp_path}/out", tag="_x4")
    assert [t.label for t in resumed.tasks] == [f"{uri}/b.jpg"]
    assert [(r.status, r.error) for r in resumed.planned] == [
        ("skipped", f"file://{tmp_path}/out/a_x4.png exists (--overwrite to replace it)")]
    assert len(distributed.plan([uri], f"file://{tmp_path}/out", tag="_x4", overwrite=True).tasks) == 2
    beside = distributed.plan([f"{uri}/a.png"], None, tag="_x4")  # no -o: beside the input
    assert [t.output_label for t in beside.tasks] == [f"{uri}/a_x4.png"]
    one = distributed.plan([f"{uri}/a.png"], f"file://{tmp_path}/big.webp", tag="_x4")
    assert [(Path(t.write).name, t.fmt) for t in one.tasks] == [("big.webp", "webp")]
    clash = distributed.plan([f"{uri}/a.png"], f"file://{src}/a.png", tag="_x4")
    assert clash.planned[0].status == "failed" and "refusing to overwrite the input" in clash.planned[0].error
    (tmp_path / "out" / "empty").mkdir()
    for args, fragment in [
        (([f"{uri}/missing"], None), "input not found"),
        (([f"file://{tmp_path}/out/empty"], None), "no images found"),
        (([f"{uri}/*.png"], None), "wildcards"),
        (([uri], "-"), "standard input and output"),
        ((["-"], f"file://{tmp_path}/o"), "standard input and output"),
    ]:
        with pytest.raises(UsageError, match=fragment):
            distributed.plan(*args, tag="_x4")


def test_worker_pool_sizes():
    assert distributed.parse_workers("4") == (4, 4)
    assert distributed.parse_workers("2-8") == (2, 8)
    for bad in ("0", "8-2", "x", "-3"):
        with pytest.raises(UsageError, match="--ray-workers"):
            distributed.parse_workers(bad)
    gpus = distributed.resources({"CPU": 32.0, "GPU": 4.0}, 1, None, None, files=100)
    assert (gpus.min_workers, gpus.max_workers, gpus.gpus, gpus.cpus) == (4, 4, 1.0, 1.0)  # one per GPU
    halves = distributed.resources({"CPU": 32.0, "GPU": 4.0}, 1, None, 0.5, files=100)
    assert (halves.max_workers, halves.gpus) == (8, 0.5)
    cpu = distributed.resources({"CPU": 2.0}, 1, "2", None, files=100)
    assert (cpu.max_workers, cpu.gpus, cpu.cpus, cpu.threads) == (2, 0.0, 1.0, 1)
    few = distributed.resources({"CPU": 64.0}, 4, "1-16", None, files=3)
    assert (few.min_workers, few.max_workers) == (1, 3)  # never more workers than files
    with pytest.raises(UsageError, match="no GPUs"):
        distributed.resources({"CPU": 8.0}, 1, None, 1, files=10)
