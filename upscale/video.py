"""Video files upscaled frame by frame as a stream, through PyAV (the `av` wheel ships FFmpeg's libraries).

    result = transcode(upscaler.upscale_array, "clip.mp4", "clip_x2.mp4", VideoSettings(codec="h265"))

Three threads and two bounded queues: the reader demuxes and decodes, the caller's thread runs the
model, the writer encodes and muxes. At most `QUEUE_FRAMES` frames wait on each side, so a two-hour
film runs in the same memory as a ten-second clip. Audio and subtitle packets travel through the same
queues in demux order and are copied as they are (re-encoded, with a note, where the output container
does not take the codec). Presentation timestamps are kept, so a variable frame rate stays variable;
the rotation tag, colour matrix, range, primaries and transfer are carried over. The output is written
to a hidden temporary file beside the destination and renamed into place when complete.

PyAV is imported inside the functions that use it: `upscale --help` does not load FFmpeg.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from upscale import atomic
from upscale.errors import UpscaleError, UsageError

# Files a folder walk takes as videos.
VIDEO_SUFFIXES = {
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".wmv", ".flv", ".ts", ".mts", ".m2ts", ".mpg",
    ".mpeg", ".ogv", ".3gp",
}
# Container (FFmpeg muxer) per output suffix; anything else is written as Matroska, which takes every codec.
_MUXERS = {
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
    ".ts": "mpegts", ".mts": "mpegts", ".m2ts": "mpegts", ".mpg": "mpeg", ".mpeg": "mpeg", ".flv": "flv",
    ".3gp": "3gp", ".ogv": "ogg", ".wmv": "asf",
}
# --codec name → FFmpeg encoders to try, best first (the wheel may lack some).
CODECS = {
    "h264": ("libx264",),
    "h265": ("libx265",),
    "vp9": ("libvpx-vp9",),
    "av1": ("libsvtav1", "libaom-av1", "librav1e"),
    "ffv1": ("ffv1",),
}
_CODEC_ALIASES = {"avc": "h264", "x264": "h264", "hevc": "h265", "x265": "h265", "vp09": "vp9", "av01": "av1"}
_CODEC_IDS = {"h264": "h264", "h265": "hevc", "vp9": "vp9", "av1": "av1", "ffv1": "ffv1"}  # FFmpeg's names
DEFAULT_CRF = {"h264": 18, "h265": 20, "vp9": 30, "av1": 30}  # visually near-lossless for upscaled footage
_CRF_RANGE = {"h264": 51, "h265": 51, "vp9": 63, "av1": 63}
_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                 "placebo")
QUEUE_FRAMES = 4  # frames waiting on each side of the model

_END = object()  # the reader's last item


@dataclass
class VideoSettings:
    """How the upscaled video is encoded. `codec` None: h264, or vp9 in WebM (which takes no h264)."""

    codec: str | None = None
    crf: int | None = None
    preset: str | None = None


@dataclass
class VideoResult:
    frames: int
    fps: float  # frames per second of the output (average, for a variable frame rate)
    duration: float  # seconds, first frame's timestamp to the last frame's end
    codec: str  # the --codec name
    input_size: tuple[int, int]  # (width, height) as stored, before the rotation tag
    output_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    output: Path | None = None


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def codec_name(codec: str | None, suffix: str = ".mp4") -> str:
    """The --codec key for a user's spelling; None is the default for the output container."""
    if codec is None:
        return "vp9" if suffix.lower() == ".webm" else "h264"
    key = _CODEC_ALIASES.get(codec.lower(), codec.lower())
    if key not in CODECS:
        raise UsageError(f"unknown video codec {codec!r}: use one of {', '.join(CODECS)}")
    return key


def output_suffix(src_suffix: str, codec: str | None) -> str:
    """The output keeps the input's container, unless that container cannot hold the codec: then .mkv."""
    key = codec_name(codec, src_suffix)
    return src_suffix if _fits(src_suffix, _CODEC_IDS[key]) else ".mkv"


def _fits(suffix: str, codec_id: str) -> bool:
    import io

    import av

    muxer = _MUXERS.get(suffix.lower())
    if muxer is None or (codec_id == "ffv1" and muxer not in ("matroska", "avi")):
        return False  # FFmpeg lists ffv1 for MP4 and MOV, but their muxers refuse it
    with av.open(io.BytesIO(), "w", format=muxer) as probe:
        return codec_id in probe.supported_codecs


# ---- the pipeline ------------------------------------------------------------------------------------


def transcode(
    upscale: Callable[[np.ndarray], np.ndarray],
    src: str | Path,
    dst: str | Path,
    settings: VideoSettings | None = None,
    *,
    max_pixels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VideoResult:
    """Decode `src`, pass every frame (H×W×3 RGB, uint8, or uint16 for more than 8 bits) through
    `upscale`, encode to `dst` (written atomically). `progress(done, total)` counts frames; total is 0
    when the file does not say how many there are."""
    import av

    src, dst = Path(src), Path(dst)
    settings = settings or VideoSettings()
    key = codec_name(settings.codec, dst.suffix)
    _check_encoder_options(key, settings)
    if not _fits(dst.suffix, _CODEC_IDS[key]):
        raise UsageError(f"{dst.suffix or 'a file without extension'} cannot hold {key} video: name the output .mkv")
    folder = dst.parent if str(dst.parent) else Path(".")
    if not folder.is_dir():
        raise UpscaleError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UpscaleError(f"cannot write into {folder}: permission denied (choose another output with -o)")
    source = _open_input(src, max_pixels)
    try:
        with atomic.replacing(dst) as tmp:  # the muxer is named, as the temporary name ends in .part
            result = _Pipeline(upscale, source, tmp, dst, key, settings, progress).run()
        result.output = dst
    except av.error.FFmpegError as exc:
        raise UpscaleError(f"cannot write {dst}: {_ffmpeg_message(exc)}") from None
    except OSError as exc:
        raise UpscaleError(f"cannot write {dst}: {exc.strerror or exc}") from None
    finally:
        source.container.close()
    return result


@dataclass
class _Source:
    path: Path
    container: Any  # av.container.InputContainer
    video: Any  # its first video stream
    others: list  # audio and subtitle streams to carry over
    expected_frames: int  # 0: unknown
    expected_end: float | None  # seconds, from the header; for the truncation check


def _open_input(path: Path, max_pixels: int | None) -> _Source:
    import av

    if not path.exists():
        raise UpscaleError(f"input not found: {path}")
    if path.is_dir():
        raise UpscaleError(f"input is a folder, not a video: {path}")
    if path.stat().st_size == 0:
        raise UpscaleError(f"{path} is empty (0 bytes): nothing to upscale")
    try:
        container = av.open(str(path))
    except PermissionError:
        raise UpscaleError(f"cannot read {path}: permission denied") from None
    except av.error.FFmpegError as exc:
        raise UpscaleError(f"cannot read {path}: not a video, or corrupt or truncated ({_ffmpeg_message(exc)})") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise UpscaleError(f"{path} has no video stream ({', '.join(kinds)}): nothing to upscale")
        video = container.streams.video[0]
        ctx = video.codec_context
        if ctx is None:  # PyAV then knows no name for the codec either
            raise UpscaleError(f"{path}: its video codec has no decoder in this FFmpeg build (PyAV {av.__version__}): "
                               "convert it to H.264 or another common codec first")
        w, h = ctx.width, ctx.height
        if max_pixels and w * h > max_pixels:
            raise UpscaleError(
                f"{path} has {w}×{h} = {w * h / 1e6:.0f} megapixel frames, over the limit of {max_pixels / 1e6:.0f} "
                "(a guard against decompression bombs): raise it with --max-megapixels if you trust the file")
        if w <= 0 or h <= 0:
            raise UpscaleError(f"{path}: the video stream has no frame size (corrupt header?)")
        ctx.thread_type = "AUTO"
        # a damaged frame is an error, not a silently concealed glitch (FFmpeg's default)
        ctx.options = {**ctx.options, "err_detect": "explode"}
        others = [s for s in container.streams if s.type in ("audio", "subtitle")]
        expected_end = None
        if video.duration and video.time_base:
            expected_end = float((video.start_time or 0) * video.time_base + video.duration * video.time_base)
        elif container.duration:
            expected_end = (container.start_time or 0) / 1e6 + container.duration / 1e6
        return _Source(path, container, video, others, max(video.frames or 0, 0), expected_end)
    except BaseException:
        container.close()
        raise


def check_settings(s: VideoSettings) -> VideoSettings:
    """The settings with the codec's name normalised (hevc → h265), or a UsageError for options that
    do not fit the codec (checked before any model is loaded). A codec of None stays None: the
    default depends on each output's container."""
    if s.codec is not None:
        s = VideoSettings(codec_name(s.codec), s.crf, s.preset)
    _check_encoder_options(s.codec or "h264", s)
    return s


def _check_encoder_options(key: str, s: VideoSettings) -> None:
    if s.crf is not None:
        if key == "ffv1":
            raise UsageError("--crf does not apply to ffv1, which is lossless")
        if not 0 <= s.crf <= _CRF_RANGE[key]:
            raise UsageError(f"--crf for {key} is 0..{_CRF_RANGE[key]}, not {s.crf}")
    if s.preset is not None:
        if key in ("h264", "h265") and s.preset not in _X26X_PRESETS:
            raise UsageError(f"--preset for {key} is one of {', '.join(_X26X_PRESETS)}")
        if key in ("vp9", "av1") and not s.preset.isdigit():
            raise UsageError(f"--preset for {key} is a number (speed: 0 slowest, 8 for vp9 and 13 for av1 fastest)")
        if key == "ffv1":
            raise UsageError("--preset does not apply to ffv1")


def _encoder(key: str):
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration on stderr unless told not to
    for name in CODECS[key]:
        try:
            return av.codec.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):  # not in this build
            continue
    raise UsageError(f"this FFmpeg build (PyAV) has no {key} encoder: choose another --codec")


class _Stop(Exception):
    """Another stage failed or the run was interrupted: this stage ends quietly."""


class _Pipeline:
    def __init__(self, upscale, source: _Source, tmp: Path, dst: Path, key: str, settings: VideoSettings,
                 progress: Callable[[int, int], None] | None):
        self.upscale, self.src, self.tmp, self.dst = upscale, source, tmp, dst
        self.key, self.settings, self.progress = key, settings, progress
        self.stop = threading.Event()
        self.decoded: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self.upscaled: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self.errors: list[BaseException] = []
        self.frames_read = 0
        self.notes: list[str] = []
        self.result: VideoResult | None = None

    def run(self) -> VideoResult:
        reader = threading.Thread(target=self._guard, args=(self._read,), name="video-reader", daemon=True)
        writer = threading.Thread(target=self._guard, args=(self._write,), name="video-writer", daemon=True)
        reader.start()
        writer.start()
        try:
            self._model()
        except _Stop:
            pass
        except BaseException:
            self.stop.set()
            raise
        finally:
            if self.errors or not writer.is_alive():
                self.stop.set()
            writer.join()
            self.stop.set()
            reader.join()
        if self.errors:
            raise self.errors[0]
        assert self.result is not None
        return self.result

    def _guard(self, stage: Callable[[], None]) -> None:
        try:
            stage()
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001  # handed to the caller's thread, which raises it
            self.errors.append(exc)
            self.stop.set()

    def _put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue) -> Any:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    # -- stage 1: demux and decode ----------------------------------------------------------------

    def _read(self) -> None:
        import av

        src = self.src
        video = src.video
        last_end = 0.0
        try:
            for packet in src.container.demux([video, *src.others]):
                if packet.stream.index != video.index:
                    if packet.size and packet.dts is not None:
                        last_end = max(last_end, _end_seconds(packet))
                        self._put(self.decoded, packet)
                    continue
                if packet.size:
                    last_end = max(last_end, _end_seconds(packet))
                for frame in packet.decode():
                    self._put(self.decoded, _to_array(frame))
                    self.frames_read += 1
        except av.error.FFmpegError as exc:
            raise UpscaleError(
                f"{src.path}: cannot decode frame {self.frames_read + 1} (corrupt or truncated?): "
                f"{_ffmpeg_message(exc)}; {self.frames_read} frames were readable") from None
        if self.frames_read == 0:
            raise UpscaleError(f"{src.path}: no video frame could be decoded (corrupt or truncated?)")
        short = src.expected_frames - self.frames_read
        fps = float(video.average_rate or video.guessed_rate or 25)
        late = (src.expected_end or 0) - last_end
        if short > 2 or late > max(0.5, 2 / fps):
            expect = f"of {src.expected_frames}" if src.expected_frames else f"ending at {last_end:.2f} s of {src.expected_end:.2f} s"
            raise UpscaleError(f"{src.path} is truncated or corrupt: only {self.frames_read} frames were readable "
                               f"({expect})")
        self._put(self.decoded, _END)

    # -- stage 2: the model, on the caller's thread (so Ctrl-C lands here) -----------------------------

    def _model(self) -> None:
        total = self.src.expected_frames or _estimate_frames(self.src)
        done = 0
        while True:
            item = self._get(self.decoded)
            if item is _END:
                self._put(self.upscaled, _END)
                return
            if isinstance(item, tuple):
                array, info = item
                item = (self.upscale(array), info)
                done += 1
                if self.progress:
                    self.progress(done, max(total, done))
            self._put(self.upscaled, item)

    # -- stage 3: encode and mux ------------------------------------------------------------------

    def _write(self) -> None:
        import av

        src = self.src
        out = av.open(str(self.tmp), "w", format=_MUXERS.get(self.dst.suffix.lower(), "matroska"))
        try:
            encoder = _Encoder(out, src.video, self.key, self.settings, self.notes)
            takes = out.supported_codecs if src.others else set()
            carried = [_Carried.add(out, s, takes, self.notes) for s in src.others]
            by_index = {s.index: c for s, c in zip(src.others, carried)}
            waiting: list = []  # packets that arrive before the video encoder is set up
            while True:
                item = self._get(self.upscaled)
                if item is _END:
                    break
                if isinstance(item, tuple):
                    encoder.encode(*item)
                    for packet in waiting:
                        by_index[packet.stream.index].mux(packet)
                    waiting.clear()
                elif not encoder.started:
                    waiting.append(item)
                else:
                    by_index[item.stream.index].mux(item)
            encoder.flush()
            for c in carried:
                c.flush()
        finally:
            out.close()
        self.result = encoder.result(src, self.notes)


def read_frames(path: str | Path, max_pixels: int | None = None) -> Iterator[np.ndarray]:
    """The frames of a video's first video stream as the upscaler sees them: H×W×3 RGB, uint8 (uint16
    for more than 8 bits), converted with the stream's own colour matrix and range, as stored (the
    rotation tag is not applied)."""
    source = _open_input(Path(path), max_pixels)
    try:
        for frame in source.container.decode(source.video):
            yield _to_array(frame)[0]
    finally:
        source.container.close()


def _to_array(frame) -> tuple[np.ndarray, _FrameInfo]:
    info = _FrameInfo.of(frame)
    return frame.to_ndarray(format="rgb48le" if info.deep else "rgb24", **info.to_rgb()), info


@dataclass
class _FrameInfo:
    """What a decoded frame says about itself, carried beside its pixels to the encoder."""

    pts: int | None
    time_base: Fraction | None
    duration: int
    colorspace: int  # swscale's matrix constant
    full_range: bool
    primaries: int
    trc: int
    rotation: int
    chroma: str  # "420", "422" or "444"
    deep: bool
    pix_fmt: str

    @classmethod
    def of(cls, frame) -> _FrameInfo:
        name = frame.format.name
        rgb = name.startswith(("gbr", "rgb", "bgr", "argb", "abgr", "0rgb", "0bgr"))
        chroma = "444" if rgb or name.startswith(("yuv444", "yuvj444", "gray")) else (
            "422" if name.startswith(("yuv422", "yuvj422", "nv16", "nv20", "yuyv422", "uyvy422")) else "420")
        full = frame.color_range == 2 or name.startswith("yuvj")  # RGB in: limited-range YUV out, as usual
        return cls(
            pts=frame.pts, time_base=frame.time_base, duration=frame.duration or 0,
            colorspace=_sws_matrix(frame.colorspace, frame.width, frame.height),
            full_range=full, primaries=int(frame.color_primaries), trc=int(frame.color_trc),
            rotation=round(frame.rotation or 0), chroma=chroma,
            deep=max(c.bits for c in frame.format.components) > 8, pix_fmt=name,
        )

    def to_rgb(self) -> dict:
        from av.video.reformatter import ColorRange, Interpolation

        if self.pix_fmt.startswith(("gbr", "rgb", "bgr")):
            return {}
        return {
            "src_colorspace": self.colorspace,
            "src_color_range": ColorRange.JPEG if self.full_range else ColorRange.MPEG,
            "interpolation": Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT,
        }


def _sws_matrix(avcol_spc: int, width: int, height: int) -> int:
    """swscale's matrix for a frame's AVColorSpace; unspecified as players guess it (BT.709 for HD)."""
    from av.video.reformatter import Colorspace

    known = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601, 6: Colorspace.ITU601,
             7: Colorspace.SMPTE240M, 9: Colorspace.BT2020, 10: Colorspace.BT2020}
    if avcol_spc in known:
        return int(known[avcol_spc])
    return int(Colorspace.ITU709 if width >= 1280 or height > 576 else Colorspace.ITU601)


_AVCOL_SPC = {1: 1, 4: 4, 5: 6, 7: 7, 9: 9}  # swscale matrix → AVColorSpace tag (601 → SMPTE 170M)
_PRIMARIES_FOR = {1: (1, 1), 6: (6, 6)}  # AVColorSpace → (primaries, transfer) when the input says neither


class _Encoder:
    """The output video stream: set up from the first upscaled frame (its size is known only then)."""

    def __init__(self, out, in_video, key: str, settings: VideoSettings, notes: list[str]):
        self.out, self.in_video, self.key, self.settings, self.notes = out, in_video, key, settings, notes
        self.codec = _encoder(key)
        rate = in_video.average_rate or in_video.guessed_rate or Fraction(25)
        self.stream = out.add_stream(self.codec.name, rate=rate)  # added first: video is stream 0
        self.started = False
        self.frames = 0
        self.first_pts: float | None = None
        self.last_end = 0.0
        self.prev_pts: int | None = None
        self.size = (0, 0)
        self.crop = (0, 0)

    def _setup(self, array: np.ndarray, info: _FrameInfo) -> None:
        from av.video.reformatter import ColorRange

        s, ctx, key = self.stream, self.stream.codec_context, self.key
        h, w = array.shape[:2]
        self.pix_fmt = self._pix_fmt(info)
        rgb = self.pix_fmt.startswith(("gbr", "bgr"))
        subsampled = not rgb and not self.pix_fmt.startswith("yuv444")
        if subsampled and self.codec.name in ("libx264", "libx265", "libsvtav1") and (w % 2 or h % 2):
            # 4:2:0 in these encoders needs even sides: drop the odd last column/row (invisible at this size)
            self.crop = (w % 2, h % 2)
            self.notes.append(f"{key} with subsampled colour needs an even size: {w}×{h} written as "
                              f"{w - w % 2}×{h - h % 2}")
            w, h = w - w % 2, h - h % 2
        self.size = (w, h)
        s.width, s.height, s.pix_fmt = w, h, self.pix_fmt
        tb = info.time_base or self.in_video.time_base or Fraction(1, 1000)
        s.time_base = tb
        ctx.time_base = tb
        ctx.thread_type = "AUTO"
        if rgb:
            ctx.colorspace, ctx.color_range = 0, int(ColorRange.JPEG)
            self.reformat: dict = {}
        else:
            spc = _AVCOL_SPC.get(info.colorspace, 6)
            ctx.colorspace = spc
            ctx.color_range = int(ColorRange.JPEG if info.full_range else ColorRange.MPEG)
            prim, trc = info.primaries, info.trc
            if prim == 2 and trc == 2:  # unspecified: say which we used, or a player guesses BT.709 by the new size
                prim, trc = _PRIMARIES_FOR.get(spc, (2, 2))
            ctx.color_primaries, ctx.color_trc = prim, trc
            from av.video.reformatter import Interpolation

            self.reformat = {
                "format": self.pix_fmt, "dst_colorspace": info.colorspace,
                "dst_color_range": ColorRange.JPEG if info.full_range else ColorRange.MPEG,
                "interpolation": Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP,
            }
        if info.rotation:
            s.set_display_rotation(info.rotation)
        ctx.options = self._options()
        self.started = True

    def _pix_fmt(self, info: _FrameInfo) -> str:
        supported = {f.name for f in self.codec.video_formats or ()}
        if self.key == "ffv1":  # lossless: RGB as the model made it (16 bits when the input had more than 8)
            return "gbrp16le" if info.deep else "bgr0"  # FFV1's 8-bit RGB is packed, its deeper RGB planar
        depth = "10le" if info.deep else ""
        for name in (f"yuv{info.chroma}p{depth}", f"yuv420p{depth}", f"yuv{info.chroma}p", "yuv420p"):
            if name in supported:
                if depth and not name.endswith(depth):
                    self.notes.append(f"{self.codec.name} in this build has no 10-bit mode: written as 8 bits")
                return name
        return "yuv420p"

    def _options(self) -> dict[str, str]:
        key, s = self.key, self.settings
        if key == "ffv1":
            return {"level": "3", "slicecrc": "1"}
        crf = str(s.crf if s.crf is not None else DEFAULT_CRF[key])
        if key in ("h264", "h265"):
            opts = {"crf": crf, "preset": s.preset or "medium"}
            if key == "h265":
                opts["x265-params"] = "log-level=error"
            return opts
        if key == "vp9":
            return {"crf": crf, "b": "0", "cpu-used": s.preset or "4", "row-mt": "1", "deadline": "good"}
        if self.codec.name == "libsvtav1":
            return {"crf": crf, "preset": s.preset or "8"}
        return {"crf": crf, "cpu-used": s.preset or "6"} if self.codec.name == "libaom-av1" else {"qp": crf}

    def encode(self, array: np.ndarray, info: _FrameInfo) -> None:
        import av

        if not self.started:
            self._setup(array, info)
        if self.crop != (0, 0):
            array = array[: self.size[1], : self.size[0]]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb48le" if array.dtype == np.uint16 else "rgb24")
        if self.reformat:
            frame = frame.reformat(**self.reformat)
        elif self.pix_fmt != frame.format.name:
            frame = frame.reformat(format=self.pix_fmt)
        tb = float(self.stream.codec_context.time_base)
        tick = max(1, round(1 / float(self.stream.codec_context.framerate or 25) / tb))  # one frame, in ticks
        pts = info.pts if info.pts is not None else (self.prev_pts + tick if self.prev_pts is not None else 0)
        if self.prev_pts is not None and pts <= self.prev_pts:
            pts = self.prev_pts + 1  # encoders need strictly increasing timestamps; broken files repeat them
        self.prev_pts = pts
        frame.pts, frame.time_base = pts, self.stream.codec_context.time_base
        if info.duration:
            frame.duration = info.duration
        start = pts * tb
        self.first_pts = start if self.first_pts is None else self.first_pts
        self.last_end = max(self.last_end, start + (info.duration or tick) * tb)
        self.out.mux(self.stream.encode(frame))
        self.frames += 1

    def flush(self) -> None:
        if self.started:
            self.out.mux(self.stream.encode(None))

    def result(self, src: _Source, notes: list[str]) -> VideoResult:
        ctx = src.video.codec_context
        duration = max(self.last_end - (self.first_pts or 0.0), 0.0)
        return VideoResult(
            frames=self.frames, fps=round(self.frames / duration, 3) if duration else 0.0, duration=round(duration, 3),
            codec=self.key, input_size=(ctx.width, ctx.height), output_size=self.size, notes=notes,
        )


class _Carried:
    """An audio or subtitle stream: packets copied as they are, or re-encoded where the container
    does not take the codec (audio), or left out with a note (subtitles, which have no common
    encoder path)."""

    def __init__(self, out, stream, copy: bool, target=None):
        self.out, self.stream, self.copy, self.target = out, stream, copy, target

    @classmethod
    def add(cls, out, stream, takes: set[str], notes: list[str]) -> _Carried:
        name = stream.codec.canonical_name if stream.codec else "unknown"
        if name in takes or (stream.codec_context is not None and stream.codec_context.name in takes):
            return cls(out, stream, True, out.add_stream_from_template(stream))
        label = f"{stream.type} stream {stream.index} ({name})"
        if stream.type == "audio" and out.default_audio_codec and out.default_audio_codec != "none":
            target = _audio_encoder_stream(out, stream)
            notes.append(f"{label} does not fit in {out.format.name}: re-encoded as {target.codec_context.name}")
            return cls(out, stream, False, target)
        notes.append(f"{label} does not fit in {out.format.name}: left out")
        return cls(out, stream, False, None)

    def mux(self, packet) -> None:
        if self.target is None:
            return
        if self.copy:
            packet.stream = self.target
            self.out.mux(packet)
            return
        for frame in packet.decode():
            self.out.mux(self.target.encode(frame))

    def flush(self) -> None:
        if self.target is not None and not self.copy:
            self.out.mux(self.target.encode(None))


def _audio_encoder_stream(out, stream):
    import av

    codec = av.codec.Codec(out.default_audio_codec, "w")
    rates = codec.audio_rates or ()
    rate = stream.rate if not rates or stream.rate in rates else max(rates)
    target = out.add_stream(codec.name, rate=rate)
    target.layout = stream.layout.name if stream.channels <= 2 else "stereo"
    return target


def _end_seconds(packet) -> float:
    ts = packet.pts if packet.pts is not None else packet.dts
    return float((ts + (packet.duration or 0)) * packet.time_base) if ts is not None and packet.time_base else 0.0


def _estimate_frames(src: _Source) -> int:
    rate = src.video.average_rate or src.video.guessed_rate
    if src.expected_end and rate:
        return round(src.expected_end * float(rate))
    return 0


def _ffmpeg_message(exc: BaseException) -> str:
    """FFmpeg's own words, without the errno and the file name PyAV repeats."""
    text = getattr(exc, "strerror", None) or str(exc)
    log = getattr(exc, "log", None)
    if log and len(log) >= 3 and log[2]:
        text = f"{text} ({str(log[2]).strip()})"
    return text
