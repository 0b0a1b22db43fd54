"""Video files through Upscaler.upscale_video (upscale/video.py): every clip is generated here by PyAV.

Most tests run a tiny random VapSR (the real engine, a few hundred parameters); one runs the authors'
VapSR x2. Clips are a few frames of 64×48 or smaller, so the whole file takes seconds.
"""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media_helpers import Nearest, make_clip, read_video

from upscale import Upscaler, video
from upscale.errors import UpscaleError, UsageError


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    import torch

    from upscale.models.vapsr import VapSR

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny_vapsr_x2.pth"
    torch.save(VapSR(2, num_feat=8, num_block=1, d_atten=8, up_feat=8).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def up(tiny_weights) -> Upscaler:
    return Upscaler(weights=tiny_weights, device="cpu")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "name, options",
    [
        ("cfr_rotated.mp4", {"rotation": 90}),
        ("vfr_10bit.mkv", {"vfr": True, "bits": 10}),
        ("odd.webm", {"size": (63, 47)}),
        ("bt709_full.mp4", {"bt709_full": True}),
    ],
)
def test_clip_keeps_frames_timing_audio_and_tags(tmp_path, name, options):
    src = tmp_path / name
    written = make_clip(src, frames=6, **options)
    result = Nearest().upscale_video(src)
    out = src.with_name(f"{src.stem}_x2{src.suffix}")
    assert result.output == out and out.exists()
    assert _leftovers(tmp_path) == []
    before, after = read_video(src), read_video(out)
    w, h = options.get("size", (64, 48))
    assert len(after["frames"]) == result.frames == 6
    assert after["size"] == result.output_size == (2 * w, 2 * h)
    # timestamps kept (a variable frame rate stays variable), relative to the first frame
    t0, u0 = before["times"][0], after["times"][0]
    np.testing.assert_allclose([t - u0 for t in after["times"]], [t - t0 for t in before["times"]], atol=1e-3)
    np.testing.assert_allclose([t - t0 for t in before["times"]], written["times"], atol=1e-3)
    frame = 1 / 24
    assert abs(result.duration - (written["end"] - written["times"][0])) <= frame
    assert after["audio"] == before["audio"] and len(after["audio"]) == 1  # copied, not re-encoded
    assert abs(after["audio_seconds"] - before["audio_seconds"]) <= frame
    assert after["rotation"] == options.get("rotation", 0)
    deep = options.get("bits") == 10
    assert after["pix_fmt"] in (("yuv420p10le",) if deep else ("yuv420p", "yuvj420p"))  # j: H.264's full range
    if options.get("bt709_full"):
        assert (before["colorspace"], before["color_range"]) == (1, 2)
        assert (after["colorspace"], after["color_range"]) == (1, 2)  # carried over
    else:  # unspecified in, tagged out (BT.601 for this size): a player need not guess from the new size
        assert (after["colorspace"], after["color_range"]) == (6, 1)
    assert result.codec == ("vp9" if src.suffix == ".webm" else "h264")
    # the content survives, and colours do not shift (the same matrix and range out as in)
    for a, b in zip(video.read_frames(out), video.read_frames(src)):
        diff = a.reshape(h, 2, w, 2, 3).mean(axis=(1, 3)) - b
        scale = 257 if b.dtype == np.uint16 else 1
        assert np.abs(diff).mean() < 4 * scale and np.abs(diff.mean(axis=(0, 1))).max() < 1.5 * scale


def test_ffv1_output_equals_the_image_path_bit_for_bit(up, tmp_path):
    src = tmp_path / "clip.mp4"
    make_clip(src, size=(33, 21), frames=5, codec="libvpx-vp9")
    result = up.upscale_video(src, codec="ffv1")
    assert result.output.suffix == ".mkv"  # MP4 does not take ffv1
    decoded = list(video.read_frames(src))
    out = read_video(result.output)
    assert out["codec"] == "ffv1" and len(out["frames"]) == len(decoded) == 5
    for got, frame in zip(out["frames"], decoded):
        np.testing.assert_array_equal(got, up.upscale_array(frame))


def test_10bit_clip_reaches_the_model_as_16_bit(tmp_path):
    src = tmp_path / "deep.mkv"
    make_clip(src, frames=3, bits=10, audio=False)
    seen = []
    result = video.transcode(lambda a: seen.append(a.dtype) or a.repeat(2, 0).repeat(2, 1), src,
                             tmp_path / "deep_x2.mkv")
    assert seen == [np.uint16] * 3 and result.frames == 3
    assert read_video(tmp_path / "deep_x2.mkv")["pix_fmt"] == "yuv420p10le"


@pytest.mark.parametrize("codec, keeps_odd", [("h264", False), ("vp9", True)])
def test_odd_output_size(tmp_path, codec, keeps_odd):
    src = tmp_path / "clip.mkv"
    make_clip(src, size=(42, 30), frames=3, audio=False)
    result = Nearest(outscale=1.5).upscale_video(src, tmp_path / f"out_{codec}.mkv", codec=codec)
    size = read_video(result.output)["size"]
    if keeps_odd:
        assert size == result.output_size == (63, 45) and not result.notes
    else:  # 4:2:0 H.264 needs even sides: the odd last column and row are dropped, and said so
        assert size == result.output_size == (62, 44)
        assert "even size" in result.notes[0]


def test_other_codecs_and_encoder_options(tmp_path):
    src = tmp_path / "clip.mp4"
    make_clip(src, frames=3)
    up = Nearest()
    h265 = up.upscale_video(src, tmp_path / "a.mp4", codec="hevc", crf=30, preset="ultrafast")
    assert h265.codec == "h265" and read_video(h265.output)["codec"] == "hevc"
    if any(_has_codec(n) for n in video.CODECS["av1"]):
        av1 = up.upscale_video(src, tmp_path / "b.mkv", codec="av1", preset="12")
        assert len(read_video(av1.output)["frames"]) == 3
    for bad in ({"codec": "divx"}, {"codec": "ffv1", "crf": 10}, {"codec": "h264", "preset": "7"},
                {"codec": "vp9", "preset": "fast"}, {"codec": "h264", "crf": 99}):
        with pytest.raises(UsageError):
            up.upscale_video(src, tmp_path / "c.mp4", **bad)
    assert not (tmp_path / "c.mp4").exists() and _leftovers(tmp_path) == []


def _has_codec(name: str, mode: str = "w") -> bool:
    try:
        av.codec.Codec(name, mode)
        return True
    except Exception:  # noqa: BLE001
        return False


def test_subtitles_copied_or_left_out_with_a_note(tmp_path):
    src = tmp_path / "film.mkv"
    make_clip(src, frames=4, subtitles=("Hello", "world"))
    lines = [("Hello", 0.0), ("world", 0.1)]
    assert read_video(src)["subtitles"] == lines
    kept = Nearest().upscale_video(src)
    assert read_video(kept.output)["subtitles"] == lines and not kept.notes
    mp4 = Nearest().upscale_video(src, tmp_path / "film.mp4")  # MP4 takes no SubRip
    assert read_video(mp4.output)["subtitles"] == [] and read_video(mp4.output)["audio"] == ["aac"]
    assert any("subtitle stream" in n and "left out" in n for n in mp4.notes)


def test_audio_reencoded_where_the_container_refuses_it(tmp_path):
    src = tmp_path / "clip.mp4"  # AAC audio: WebM takes only Opus or Vorbis
    make_clip(src, frames=4)
    result = Nearest().upscale_video(src, tmp_path / "clip.webm")
    after = read_video(result.output)
    assert result.codec == "vp9" and after["audio"] == ["opus"]
    assert any("re-encoded as libopus" in n for n in result.notes)
    assert abs(after["audio_seconds"] - read_video(src)["audio_seconds"]) < 0.05


def test_bad_inputs_fail_cleanly(tmp_path):
    up = Nearest()
    good = tmp_path / "good.mkv"
    make_clip(good, frames=24)
    data = good.read_bytes()
    cases = {
        "truncated.mkv": (data[: len(data) // 2], "frames were readable"),
        "garbage.mp4": (bytes(range(256)) * 20, "not a video"),
        "empty.mp4": (b"", "empty"),
    }
    corrupt = bytearray(data)
    for i in range(len(data) // 3, len(data) // 3 + 300):
        corrupt[i] = (corrupt[i] * 7 + 13) % 256
    cases["corrupt.mkv"] = (bytes(corrupt), "frames were readable")
    for name, (content, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        dst = tmp_path / f"out_{name}"
        with pytest.raises(UpscaleError, match=words) as info:
            up.upscale_video(path, dst)
        assert "\n" not in str(info.value)
        assert not dst.exists()
    assert _leftovers(tmp_path) == []

    silent = tmp_path / "sound_only.mkv"
    with av.open(str(silent), "w") as out:
        a = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        out.mux(a.encode(frame))
        out.mux(a.encode())
    with pytest.raises(UpscaleError, match="no video stream"):
        up.upscale_video(silent, tmp_path / "x.mkv")
    if _has_codec("evc", "r"):
        return  # a later wheel decodes EVC: the case below needs a codec without a decoder
    unknown = tmp_path / "evc.mp4"  # MPEG-5 EVC: FFmpeg knows the codec, the wheel has no decoder for it
    with av.open(str(unknown), "w") as out:
        stream = out.add_mux_stream("evc", width=64, height=48, time_base=Fraction(1, 25))
        for i in range(3):
            packet = av.Packet(bytes(50))
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, Fraction(1, 25), i, i
            out.mux(packet)
    with pytest.raises(UpscaleError, match="no decoder"):
        up.upscale_video(unknown, tmp_path / "z.mp4")
    with pytest.raises(UpscaleError, match="megapixel"):
        Nearest(max_pixels=1000).upscale_video(good, tmp_path / "y.mkv")


def test_frames_stream_through_bounded_queues(tmp_path, monkeypatch):
    """The reader never runs more than the queues' worth of frames ahead of the model."""
    src = tmp_path / "long.mkv"
    make_clip(src, size=(32, 24), frames=40)
    decoded = []
    real = video._to_array
    monkeypatch.setattr(video, "_to_array", lambda frame: decoded.append(1) or real(frame))
    ahead = []

    def slow_model(a):
        ahead.append(len(decoded) - len(ahead))
        threading.Event().wait(0.002)
        return a.repeat(2, 0).repeat(2, 1)

    progress = []
    result = video.transcode(slow_model, src, tmp_path / "long_x2.mkv", progress=lambda d, t: progress.append((d, t)))
    assert result.frames == 40 and len(ahead) == 40
    assert max(ahead) <= video.QUEUE_FRAMES + 2
    assert progress[-1][0] == 40 and progress[-1][1] >= 40


def test_interrupt_leaves_no_partial_file(tmp_path):
    src = tmp_path / "clip.mkv"
    make_clip(src, frames=12)
    threads = threading.active_count()

    def interrupted(a):
        interrupted.calls += 1
        if interrupted.calls == 4:
            raise KeyboardInterrupt
        return a.repeat(2, 0).repeat(2, 1)

    interrupted.calls = 0
    with pytest.raises(KeyboardInterrupt):
        video.transcode(interrupted, src, tmp_path / "clip_x2.mkv")
    assert not (tmp_path / "clip_x2.mkv").exists() and _leftovers(tmp_path) == []
    assert threading.active_count() == threads  # reader and writer ended


def test_frame_iterator_api(up, tmp_path):
    src = tmp_path / "clip.mp4"
    make_clip(src, size=(32, 24), frames=3, audio=False)
    frames = list(up.upscale_frames(video.read_frames(src)))
    assert [f.shape for f in frames] == [(48, 64, 3)] * 3 and frames[0].dtype == np.uint8


def test_real_vapsr_x2(shared, tmp_path):
    src = tmp_path / "clip.mp4"
    make_clip(src, size=(40, 32), frames=3)
    up = Upscaler(model="vapsr", scale=2, weights=shared / "weights" / "VapSR_X2.pth", device="cpu")
    result = up.upscale_video(src)
    out = read_video(result.output)
    assert result.frames == 3 and out["size"] == (80, 64) and out["audio"] == ["aac"]
    for got, frame in zip(out["frames"], video.read_frames(src)):
        want = up.upscale_array(frame).astype(np.float64)
        mse = ((got.astype(np.float64) - want) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) > 30  # H.264 at CRF 18 keeps the network's output


# ---- the command ---------------------------------------------------------------------------------------


def test_cli_folder_mixing_stills_animations_and_videos(tiny_weights, tmp_path):
    import json

    from cli_helpers import run_cli
    from media_helpers import make_animation
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "clip.mp4", frames=5)
    make_clip(src / "odd.webm", size=(31, 23), frames=3, audio=False)
    make_animation(src / "sticker.gif")
    Image.fromarray(np.zeros((8, 6, 3), np.uint8)).save(src / "still.png")
    (src / "broken.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(200))
    out = tmp_path / "out"
    proc = run_cli(src, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--json", "--codec", "h265",
                   "--crf", "28", "--preset", "ultrafast")
    assert proc.returncode == 1, proc.stderr.decode()  # one file failed, the others were done
    rows = {Path(r["input"]).name: r for r in map(json.loads, proc.stdout.decode().splitlines())}
    assert rows["broken.mkv"]["status"] == "failed" and "broken.mkv" in rows["broken.mkv"]["error"]
    clip = rows["clip.mp4"]
    assert clip["status"] == "ok" and clip["output"].endswith("clip_x2.mp4")
    assert clip["frames"] == 5 and clip["codec"] == "h265" and clip["fps"] == 24.0 and clip["seconds"] > 0
    assert abs(clip["duration"] - 5 / 24) < 1e-3
    odd = rows["odd.webm"]  # WebM takes no h265: Matroska instead
    assert odd["output"].endswith("odd_x2.mkv") and odd["output_size"] == [62, 46] and odd["codec"] == "h265"
    assert rows["sticker.gif"]["frames"] == 3 and rows["sticker.gif"]["output"].endswith("sticker_x2.gif")
    assert rows["still.png"]["output"].endswith("still_x2.png") and "frames" not in rows["still.png"]
    errors = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr.decode()
    assert read_video(out / "clip_x2.mp4")["codec"] == "hevc"
    assert sorted(p.name for p in out.iterdir()) == ["clip_x2.mp4", "odd_x2.mkv", "sticker_x2.gif", "still_x2.png"]

    again = run_cli(src, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--codec", "hevc")
    assert again.returncode == 1 and again.stderr.decode().count("skipped:") == 4  # resumes; broken still fails
    bad = run_cli(src / "clip.mp4", "--weights", tiny_weights, "--codec", "divx")
    assert bad.returncode == 2 and "divx" in bad.stderr.decode()
    piped = run_cli(src / "clip.mp4", "-o", "-", "--weights", tiny_weights, "--device", "cpu")
    assert piped.returncode == 1 and "standard output" in piped.stderr.decode() and piped.stdout == b""


def test_cli_interrupted_video_leaves_no_partial_file(tiny_weights, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "long.mkv"
    make_clip(src, size=(64, 48), frames=240, audio=True)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "upscale", str(src), "-o", str(out / "long_x2.mkv"), "--weights", str(tiny_weights),
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    deadline = time.monotonic() + 120
    while not any(out.iterdir()):  # the temporary file is there: the model is loaded, frames are flowing
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "the clip was done before the interruption: make it longer"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
    assert list(out.iterdir()) == []
