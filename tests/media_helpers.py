"""Synthetic moving pictures for the video and animation tests: everything is generated here, nothing fetched.

Clips show a gradient that slides a few pixels per frame (so every frame differs) and carry a 440 Hz sine
as AAC (or Opus in WebM). Animations have unequal frame durations and, where asked, transparent areas.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from upscale import Upscaler


def moving_frame(i: int, width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack(
        [(xx * 5 + i * 9) % 256, (yy * 6 + i * 3) % 256, ((xx + 2 * yy) * 3 + i * 17) % 256], axis=2
    ).astype(np.uint8)


def frame_ticks(frames: int, vfr: bool) -> list[int]:
    """Timestamps in ticks of 1/(10·fps): constant (10 ticks a frame) or alternating 5 and 20 ticks."""
    pts, out = 0, []
    for i in range(frames):
        out.append(pts)
        pts += (5 if i % 2 else 20) if vfr else 10
    return out


def make_clip(
    path: Path,
    size: tuple[int, int] = (64, 48),
    frames: int = 8,
    fps: int = 24,
    *,
    vfr: bool = False,
    bits: int = 8,
    rotation: int = 0,
    audio: bool = True,
    codec: str | None = None,
    pix_fmt: str | None = None,
    bt709_full: bool = False,
    subtitles: tuple[str, ...] = (),
) -> dict:
    """Write a clip; returns what was written (frame timestamps in seconds, durations)."""
    import av

    width, height = size
    path = Path(path)
    webm = path.suffix == ".webm"
    codec = codec or ("libvpx-vp9" if webm or width % 2 or height % 2 else "libx264")
    ticks = frame_ticks(frames, vfr)
    tb = Fraction(1, fps * 10)
    end_ticks = ticks[-1] + (20 if vfr and (frames - 1) % 2 == 0 else 10 if not vfr else 5)
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=fps)
        v.width, v.height = width, height
        v.pix_fmt = pix_fmt or ("yuv420p10le" if bits == 10 else "yuv420p")
        v.time_base = tb
        v.codec_context.time_base = tb
        if codec == "libx264":
            v.codec_context.options = {"preset": "ultrafast", "crf": "10"}
        elif codec == "libvpx-vp9":
            v.codec_context.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0"}
        if rotation:
            v.set_display_rotation(rotation)
        convert: dict = {"format": v.pix_fmt}
        if bt709_full:  # tagged BT.709, full range: the upscaled clip must say (and use) the same
            ctx = v.codec_context
            ctx.colorspace, ctx.color_range, ctx.color_primaries, ctx.color_trc = 1, 2, 1, 1
            convert.update(dst_colorspace="ITU709", dst_color_range="JPEG")
        a = None
        if audio:
            a = out.add_stream("libopus" if webm else "aac", rate=48000)
            a.layout = "mono"
        subs = out.add_mux_stream("subrip", time_base=Fraction(1, 1000)) if subtitles else None
        for i, text in enumerate(subtitles):  # one line every 100 ms
            packet = av.Packet(text.encode())
            packet.stream, packet.time_base = subs, Fraction(1, 1000)
            packet.pts = packet.dts = 100 * i
            packet.duration = 90
            out.mux(packet)
        for i, pts in enumerate(ticks):
            rgb = moving_frame(i, width, height)
            if bits == 10:
                f = av.VideoFrame.from_ndarray(rgb.astype(np.uint16) * 257, format="rgb48le")
            else:
                f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f = f.reformat(**convert)
            f.pts, f.time_base = pts, tb
            out.mux(v.encode(f))
        out.mux(v.encode())
        if a is not None:
            seconds = float(end_ticks * tb)
            n = round(48000 * seconds)
            t = np.arange(n) / 48000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for k in range(0, n, 960):
                af = av.AudioFrame.from_ndarray(samples[:, k:k + 960], format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 48000, k, Fraction(1, 48000)
                out.mux(a.encode(af))
            out.mux(a.encode())
    return {"times": [float(t * tb) for t in ticks], "end": float(end_ticks * tb)}


def read_video(path: Path, fmt: str = "rgb24") -> dict:
    """Everything the tests check about a video file, decoded with PyAV."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames, times, rotation, info = [], [], 0, {}
        for frame in c.decode(v):
            frames.append(frame.to_ndarray(format=fmt))
            times.append(float(frame.pts * frame.time_base))
            rotation = frame.rotation
            info = {"pix_fmt": frame.format.name, "colorspace": int(frame.colorspace),
                    "color_range": int(frame.color_range)}
        size, codec = (v.width, v.height), v.codec_context.name
    with av.open(str(path)) as c:
        audio = [s for s in c.streams if s.type == "audio"]
        subtitles = [(bytes(p).decode(), float(p.pts * p.time_base)) for s in c.streams.subtitles[:1]
                     for p in c.demux(s) if p.size]
    with av.open(str(path)) as c:
        audio = [s for s in c.streams if s.type == "audio"]
        audio_seconds = None
        if audio:
            ends = [float((p.pts + p.duration) * p.time_base) for p in c.demux(audio[0]) if p.pts is not None]
            audio_seconds = max(ends) if ends else 0.0
        return {
            "frames": frames, "times": times, "size": size, "codec": codec, "subtitles": subtitles,
            "rotation": rotation, "audio": [s.codec_context.name for s in audio], "audio_seconds": audio_seconds,
            **info,
        }


def make_animation(path: Path, size: tuple[int, int] = (20, 14), durations=(40, 120, 70), *,
                   transparent: bool = True, loop: int | None = 0) -> list[np.ndarray]:
    """An animated GIF, WebP or APNG (by suffix) with unequal durations; returns the RGBA frames."""
    width, height = size
    frames = []
    for i in range(len(durations)):
        rgb = moving_frame(i, width, height)
        alpha = np.full((height, width), 255, np.uint8)
        if transparent:
            alpha[:, : width // 3] = 0  # a transparent band, as a sticker's background
        frames.append(np.dstack([rgb, alpha]))
    ims = [Image.fromarray(f, "RGBA") for f in frames]
    path = Path(path)
    options: dict = {"save_all": True, "append_images": ims[1:], "duration": list(durations)}
    if loop is not None:
        options["loop"] = loop
    if path.suffix == ".gif":
        options["disposal"] = 2
    elif path.suffix == ".webp":
        options["lossless"] = True
    ims[0].save(path, **options)
    return frames


class Nearest(Upscaler):
    """The network replaced by pixel repetition: sizes and plumbing are what is tested."""

    @property
    def scale(self) -> int:
        return 2

    def upscale_rgb(self, array, progress=None):
        return array.repeat(2, axis=0).repeat(2, axis=1)
