"""The same `upscale` job on a Ray cluster, with Ray Data (the `[ray]` extra: `pip install 'upscale[ray]'`).

    job = distributed.plan(["s3://bucket/photos"], "s3://bucket/big", recursive=True, tag="_x4")
    for result in distributed.run({"model": "vapsr", "scale": 4}, job, address="auto"):
        print(result.to_json())

The driver lists the inputs once and plans every output with the rules of a local run (upscale.batch:
naming, -r, --suffix, -f, outputs that exist are skipped so a rerun resumes, never over an input), then
streams the files through the cluster: `ray.data.read_binary_files` reads them (bytes, not decoded: alpha,
16 bits and metadata survive), a pool of actors each holding one loaded Upscaler does a file's whole work
with `Upscaler.upscale_encoded` (the function local runs use, so the outputs are the same bytes) and
writes the result itself, through a temporary name renamed into place. Only a small report per file
travels back to the driver; decoding, inference, encoding and writing all scale with the workers.

Paths are local (a filesystem every node sees at the same path, such as NFS) or URIs that pyarrow's
filesystems open: s3://, gs://, abfs://, file://. No Ray and no torch at import time.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import posixpath
import re
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from upscale import atomic, batch, images
from upscale.errors import UpscaleError, UsageError

INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'upscale[ray]'"
LOCAL = "local"  # ADDRESS that starts Ray on this machine, listening on 127.0.0.1 only
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_GLOB_CHARS = set("*?[")
# A file whose worker died this many times in a row is reported as failed, not retried forever
# (an image that always kills its worker, e.g. by running the node out of memory).
CRASH_RETRIES = 2


def is_uri(text: str | Path) -> bool:
    return bool(_URI.match(str(text)))


@dataclass(frozen=True)
class Task:
    """One file to upscale: where the workers read and write it, and how reports name it."""

    read: str  # path on the source filesystem, as given to (and given back by) read_binary_files
    label: str  # the input as the user named it
    write: str  # path on the destination filesystem
    output_label: str
    fmt: str


@dataclass
class Plan:
    tasks: list[Task]
    planned: list[batch.Result] = field(default_factory=list)  # skipped or refused while planning
    source_fs: Any = None  # a pyarrow FileSystem, or None for local paths
    dest_fs: Any = None  # None: local paths, written with images.write_bytes


# ---- planning (on the driver, once) -------------------------------------------------------------------


def plan(
    inputs: Sequence[str | Path], output: str | Path | None = None, *, recursive: bool = False, tag: str,
    fmt: str | None = None, overwrite: bool = False,
) -> Plan:
    """List the inputs once and decide every output, with the rules of a local run."""
    texts = [str(i) for i in inputs]
    if batch.STDIO in texts or (output is not None and str(output) == batch.STDIO):
        raise UsageError("--ray reads and writes files: standard input and output (-) are for local runs")
    if any(is_uri(t) for t in [*texts, str(output or "")]):
        if not texts:
            raise UsageError("no input: give image files, folders or URIs")
        try:
            return _plan_uris(texts, None if output is None else str(output), recursive, tag, fmt, overwrite)
        except OSError as exc:  # permissions, credentials, an unreachable store: one line, not a traceback
            raise UpscaleError(f"cannot list the inputs or the output: {_first_line(exc)}") from None
    sources = batch.collect(texts, recursive=recursive, exclude=Path(output) if output else None)
    jobs = batch.plan(sources, output, tag=tag, fmt=fmt, overwrite=overwrite)
    result = Plan([])
    for job in jobs:
        if job.skip or job.error:
            status = "skipped" if job.skip else "failed"
            result.planned.append(batch.Result(job.source.label, job.output_label, status, error=job.skip or job.error))
        else:  # absolute: a worker's current folder is not the driver's
            result.tasks.append(Task(str(job.source.path.absolute()), job.source.label,
                                     str(job.output.absolute()), job.output_label, job.fmt))
    return result


def _filesystem(text: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) for a URI or a local path."""
    from pyarrow import fs as pafs

    if not is_uri(text):
        return pafs.LocalFileSystem(), os.path.abspath(text)
    try:
        return pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:  # an unknown scheme (ArrowInvalid is a ValueError), no credentials
        raise UsageError(f"cannot open {text}: {exc}") from None


def _join_label(base: str, rel: str) -> str:
    return base if not rel or rel == "." else f"{base.rstrip('/')}/{rel}"


def _plan_uris(texts: list[str], output: str | None, recursive: bool, tag: str, fmt: str | None,
               overwrite: bool) -> Plan:
    from pyarrow import fs as pafs

    src_fs = None
    dst_fs, out_root = _filesystem(output) if output is not None else (None, None)
    found: list[tuple[str, str, str | None]] = []  # (path, label, path under the folder it was found in)
    for text in texts:
        if not text:
            raise UsageError("empty input name")
        fs, root = _filesystem(text)
        if src_fs is None:
            src_fs = fs
        elif not src_fs.equals(fs):
            raise UsageError(f"--ray reads from one filesystem per run: {texts[0]} and {text} are on different ones")
        if _GLOB_CHARS & set(text):
            raise UsageError(f"wildcards work in local paths only, not in {text}: give its folder (-r for sub-folders)")
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            skip = out_root if dst_fs is not None and dst_fs.equals(fs) else None
            paths = _walk(fs, root, recursive, skip)
            if not paths:
                raise UsageError(f"no images found in {text}{'' if recursive else ' (add -r to include sub-folders)'}")
            for path in paths:
                rel = posixpath.relpath(path, root)
                found.append((path, _join_label(text, rel), rel))
        elif info.type == pafs.FileType.File:
            found.append((root, text, None))
        else:
            raise UsageError(f"input not found: {text}")

    one_file = (output is not None and len(found) == 1 and found[0][2] is None and not output.endswith("/")
                and posixpath.splitext(out_root)[1].lower() in images.IMAGE_SUFFIXES
                and dst_fs.get_file_info(out_root).type != pafs.FileType.Directory)
    if output is not None and not one_file and dst_fs.get_file_info(out_root).type == pafs.FileType.File:
        raise UsageError(f"{output} is a file, but the inputs need an output folder")
    fmt_key = images.format_name(fmt) if fmt else None
    ext = images.FORMATS[fmt_key or "png"][1]
    rows: list[tuple[str, str, str, str, str | None, str]] = []  # path, label, out, out label, rel, fmt
    for path, label, rel in found:
        if one_file:
            rows.append((path, label, out_root, output, rel, images.format_name(fmt, out_root)))
            continue
        name = batch.output_name(posixpath.splitext(posixpath.basename(path))[0], tag, ext)
        if out_root is None:  # beside the input
            out_path, out_label = posixpath.join(posixpath.dirname(path), name), _join_label(posixpath.dirname(label), name)
        else:
            sub = posixpath.join(posixpath.dirname(rel), name) if rel else name
            out_path, out_label = posixpath.join(out_root, sub), _join_label(output, sub)
        rows.append((path, label, out_path, out_label, rel, fmt_key or "png"))
    dst_fs = dst_fs or src_fs
    same_fs = dst_fs.equals(src_fs)

    # The checks of batch.plan: outputs of an earlier run beside their inputs are not inputs; never over
    # an input; never two images to one name; outputs that exist are skipped (listed once).
    planned_outputs = {r[2] for r in rows} if same_fs else set()
    rows = [r for r in rows if r[4] is None or r[0] not in planned_outputs]
    inputs = {r[0] for r in rows} if same_fs else set()
    existing = _existing(dst_fs, out_root, [r[2] for r in rows])
    result = Plan([], source_fs=src_fs, dest_fs=dst_fs)
    seen: dict[str, str] = {}
    for path, label, out_path, out_label, _rel, key in rows:
        error = skip = None
        if out_path in inputs:
            error = f"refusing to overwrite the input {out_label}: choose another -o or --suffix"
        elif out_path in seen:
            error = f"{out_label} is also the output of {seen[out_path]}: use -r with a folder, or -o"
        elif out_path in existing and not overwrite:
            skip = f"{out_label} exists (--overwrite to replace it)"
        seen.setdefault(out_path, label)
        if error or skip:
            result.planned.append(batch.Result(label, out_label, "failed" if error else "skipped", error=error or skip))
        else:
            result.tasks.append(Task(path, label, out_path, out_label, key))
    return result


def _walk(fs: Any, root: str, recursive: bool, skip: str | None) -> list[str]:
    """Image files under a folder, as batch.collect takes them: by suffix, no hidden files or folders."""
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive))
    found = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(info.path, root)
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if skip is not None and (info.path + "/").startswith(skip.rstrip("/") + "/"):
            continue
        if posixpath.splitext(info.path)[1].lower() in images.IMAGE_SUFFIXES:
            found.append(info.path)
    return sorted(found)


def _existing(fs: Any, root: str | None, paths: list[str]) -> set[str]:
    from pyarrow import fs as pafs

    if root is not None:  # one listing of the destination, not one request per output
        infos = [fs.get_file_info(root)]  # -o names one file
        if infos[0].type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    else:
        infos = fs.get_file_info(paths) if paths else []
    return {i.path for i in infos if i.type == pafs.FileType.File}


# ---- writing (on the workers) -------------------------------------------------------------------------


def write(fs: Any, path: str, data: bytes) -> None:
    """Write `data` under a temporary name beside `path`, then rename it into place: a file under its final
    name is always whole. `fs` None: a local path (images.write_bytes, flushed to disk)."""
    if fs is None:
        folder = Path(path).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UpscaleError(f"cannot create the folder {folder}: {exc.strerror}") from None
        images.write_bytes(data, path)
        return
    folder = posixpath.dirname(path)
    tmp = str(atomic.temp_path(PurePosixPath(path)))  # the temporary names of local writes
    try:
        fs.create_dir(folder, recursive=True)  # nothing on object stores
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        if isinstance(exc, OSError):
            raise UpscaleError(f"cannot write {path}: {exc}") from None
        raise


def _remove_partial(plan: Plan, tasks: list[Task]) -> None:
    """Remove the temporary files of these tasks' writes (one listing per output folder)."""
    from pyarrow import fs as pafs

    fs = plan.dest_fs or pafs.LocalFileSystem()
    by_folder: dict[str, list[str]] = {}
    for task in tasks:
        folder, name = posixpath.split(task.write)
        by_folder.setdefault(folder, []).append(atomic.temp_glob(name))
    for folder, patterns in by_folder.items():
        with contextlib.suppress(Exception):
            for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                base = posixpath.basename(info.path)
                if base.startswith(".") and base.endswith(".part") and any(fnmatch.fnmatchcase(base, p) for p in patterns):
                    fs.delete_file(info.path)


# ---- workers ----------------------------------------------------------------------------------------


class Worker:
    """One actor of the pool: an Upscaler loaded once (weights from this node's cache, downloaded into it
    once), then every file the actor is handed."""

    def __init__(self, settings: dict[str, Any], table: list, dest_fs: Any, attempts: Any, quality: int | None,
                 png_compression: int | None, threads: int | None, debug: bool):
        import ray

        from upscale.upscaler import Upscaler

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.tasks: dict[str, Task] = {t.read: t for t in ray.get(table[0])}
        self.dest_fs, self.attempts, self.quality, self.debug = dest_fs, attempts, quality, debug
        self.png_compression = png_compression
        self.up = Upscaler(**settings)
        self.info = dict(self.up.describe(), outscale=self.up.outscale)

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        reports = [self.one(bytes(data), str(path)) for data, path in zip(rows["bytes"], rows["path"])]
        return {"report": np.array(reports, dtype=object)}

    def one(self, data: bytes, path: str) -> str:
        import ray

        task = self.tasks[path]
        start = time.perf_counter()
        tries = ray.get(self.attempts.start.remote(path))
        try:
            if tries > CRASH_RETRIES + 1:
                raise UpscaleError(f"{task.label} was not upscaled: it stopped {tries - 1} workers (out of memory?)")
            done = self.up.upscale_encoded(data, task.fmt, self.quality, self.png_compression, name=task.label)
            write(self.dest_fs, task.write, done.data)
            result = batch.Result(task.label, task.output_label, "ok", done.input_size, done.output_size,
                                  notes=done.notes)
        except UpscaleError as exc:
            result = batch.Result(task.label, task.output_label, "failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001  (e.g. out of memory on one huge image: report it, go on)
            text = str(exc).strip().splitlines()
            hint = traceback.format_exc() if self.debug else "(run with --debug for the traceback)"
            result = batch.Result(task.label, task.output_label, "failed",
                                  error=f"{type(exc).__name__}: {text[0] if text else ''} {hint}")
        result.seconds = time.perf_counter() - start
        result.run = self.info
        return json.dumps({"read": path, **result.to_json()})


def _result(report: str) -> tuple[str, batch.Result]:
    row = json.loads(report)
    read = row.pop("read")
    keys = ("input", "output", "status", "input_size", "output_size", "seconds", "error", "notes")
    fields = {k: row.pop(k) for k in keys}
    for k in ("input_size", "output_size"):
        fields[k] = tuple(fields[k]) if fields[k] else None
    return read, batch.Result(**fields, run=row)


# ---- the driver -------------------------------------------------------------------------------------


def import_ray(address: str | None = None) -> Any:
    """Ray, or the one-line hint to install it. A local Ray must listen on 127.0.0.1 only: Ray reads that
    choice from the environment when it is first imported."""
    if address == LOCAL:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every service bound to the loopback address
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def connect(address: str, debug: bool = False, num_cpus: int | None = None) -> bool:
    """Join or start Ray: `local` (a new Ray on this machine, 127.0.0.1 only; `num_cpus` limits it),
    `auto` (the running cluster), `ray://HOST:PORT` (Ray client) or HOST:PORT. True when this call
    connected (the caller shuts it down); False when this process was connected already. Ray's own logs
    stay out of the terminal unless `debug`."""
    ray = import_ray(address)
    if ray.is_initialized():
        return False
    level = logging.INFO if debug else logging.ERROR
    options: dict[str, Any] = {"logging_level": level, "log_to_driver": debug}
    if address == LOCAL and _binds_every_interface(ray):
        raise UsageError("a local Ray would listen on every network interface: ray was imported before upscale "
                         "could ask for 127.0.0.1 only (set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing it)")
    try:
        if address == LOCAL:
            ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, **options)
        else:
            ray.init(address=address, **options)
    except ConnectionError as exc:
        raise UpscaleError(f"cannot reach the Ray cluster at {address}: {_first_line(exc)}") from None
    return True


def _binds_every_interface(ray: Any) -> bool:
    """Whether Ray, as imported, would start its services on the machine's addresses (Ray reads
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is first imported)."""
    from ray._private import ray_constants

    return bool(getattr(ray_constants, "ENABLE_RAY_CLUSTER", True))


def run(
    settings: dict[str, Any], job: Plan, *, address: str | None = None, workers: str | int | None = None,
    gpus_per_worker: float | None = None, quality: int | None = None, png_compression: int | None = None,
    debug: bool = False,
) -> Iterator[batch.Result]:
    """Run a plan on Ray, yielding one Result per file as files finish (not in input order).

    `settings` are the Upscaler's arguments. `address` None: the Ray this process has already joined.
    `workers`: N, or "MIN-MAX" for a pool that grows with the work (default: one per GPU, else one
    per node). `gpus_per_worker`: default 1 when the cluster has GPUs (0.5 puts two small models on a GPU).
    A file that fails is reported and the others go on; a worker that dies is restarted by Ray and its
    files retried (a file that has stopped CRASH_RETRIES + 1 workers is reported as failed)."""
    yield from job.planned
    if not job.tasks:
        return
    ray = import_ray(address)
    with contextlib.nullcontext() if debug else _native_logs_hidden():
        yield from _run(ray, settings, job, address, workers, gpus_per_worker, (quality, png_compression), debug)


def _run(ray: Any, settings: dict[str, Any], job: Plan, address: str | None, workers: str | int | None,
         gpus_per_worker: float | None, encoding: tuple, debug: bool) -> Iterator[batch.Result]:
    started = connect(address, debug) if address is not None else False
    if not ray.is_initialized():
        raise UsageError("no Ray to run on: give --ray local, auto or ray://HOST:PORT")
    done: set[str] = set()
    try:
        try:
            for report in _reports(ray, settings, job, workers, gpus_per_worker, encoding, debug):
                read, result = _result(report)
                done.add(read)
                yield result
        except Exception as exc:
            if debug or isinstance(exc, UsageError):
                raise
            raise _failure(exc) from None
        for task in job.tasks:
            if task.read not in done:  # Ray could not read it (the block was dropped: max_errored_blocks)
                yield batch.Result(task.label, task.output_label, "failed",
                                   error=f"cannot read {task.label} (run with --debug for Ray's logs)")
    finally:
        if started:  # stop the workers before cleaning up after them
            ray.shutdown()
        # Temporary files of writes cut short: a worker that died mid-write (restarted by Ray), or workers
        # stopped by an interruption. Under a final name there is only ever a whole file.
        _remove_partial(job, job.tasks)


# A log line of Ray's C++ core: "[2026-01-01 10:00:00,123 E 4242 4242] core_worker.cc:2465: ..."
_NATIVE_LOG = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWE] \d+ \d+\] \S+:\d+: ")


@contextlib.contextmanager
def _native_logs_hidden() -> Iterator[None]:
    """Keep Ray's C++ log lines off the terminal. They are written to file descriptor 2 directly, past
    Python's logging (in Ray 2.60 every actor pool with restarts logs an error-level warning about its own
    arguments); they stay in Ray's log files. Everything else written there passes through, and Python's
    own stderr (the progress bar) is pointed at the terminal itself."""
    import sys
    import threading

    try:
        sys.stderr.flush()
        terminal = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to protect
        yield
        return
    read_end, write_end = os.pipe()
    python_stderr = sys.stderr
    sys.stderr = open(terminal, "w", buffering=1, closefd=False, encoding=getattr(python_stderr, "encoding", None),  # noqa: SIM115
                      errors="backslashreplace")

    def pump() -> None:
        with open(read_end, "rb") as lines:
            for line in lines:
                if not _NATIVE_LOG.match(line):
                    os.write(terminal, line)

    thread = threading.Thread(target=pump, name="ray-log-filter", daemon=True)
    os.dup2(write_end, 2)
    os.close(write_end)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # the pipe's last writer here closes: the pump drains it and ends
        thread.join(timeout=2)
        sys.stderr = python_stderr
        os.close(terminal)


def _reports(ray: Any, settings: dict[str, Any], job: Plan, workers: str | int | None,
             gpus_per_worker: float | None, encoding: tuple, debug: bool) -> Iterator[str]:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    wanted = {
        "enable_progress_bars": debug,  # the driver draws its own bar
        "enable_auto_log_stats": False,
        "max_errored_blocks": -1,  # a file Ray could not read is dropped (and reported), not fatal
    }
    before = {name: getattr(ctx, name) for name in wanted}  # a library caller's own settings come back after
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [lg.level for lg in loggers]
    try:
        for name, value in wanted.items():
            setattr(ctx, name, value)
        for lg in loggers if not debug else []:
            lg.setLevel(logging.ERROR)
        yield from _execute(ray, settings, job, workers, gpus_per_worker, encoding, debug)
    finally:
        for name, value in before.items():
            setattr(ctx, name, value)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _execute(ray: Any, settings: dict[str, Any], job: Plan, workers: str | int | None,
             gpus_per_worker: float | None, encoding: tuple, debug: bool) -> Iterator[str]:
    """`encoding`: (quality, png_compression), as local runs take them."""
    from ray.data import ActorPoolStrategy

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    pool = resources(ray.cluster_resources(), nodes, workers, gpus_per_worker, len(job.tasks))
    table = [ray.put(job.tasks)]  # in each node's object store once, not pickled into every actor
    attempts = ray.remote(num_cpus=0)(Attempts).remote()
    data = ray.data.read_binary_files(
        [t.read for t in job.tasks], include_paths=True, filesystem=job.source_fs,
        # reading is I/O: never kept waiting for the cores the workers hold, but a bounded number of read
        # tasks at once (a task without CPUs is otherwise started at once, each in a process of its own)
        num_cpus=0, concurrency=2 * pool.max_workers,
        override_num_blocks=min(len(job.tasks), 32 * pool.max_workers),  # files stream in small blocks
    )
    results = data.map_batches(
        Worker, batch_size=1, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=pool.min_workers, max_size=pool.max_workers),
        fn_constructor_kwargs={"settings": settings, "table": table, "dest_fs": job.dest_fs, "attempts": attempts,
                               "quality": encoding[0], "png_compression": encoding[1], "threads": pool.threads,
                               "debug": debug},
        num_cpus=pool.cpus, num_gpus=pool.gpus,  # Ray Data restarts dead workers and retries their files
    )
    for row in results.iter_rows():
        yield row["report"]


class Attempts:
    """How many times each file was handed to a worker. Ray restarts a worker that dies and hands its files
    out again, as often as it takes: a file handed out more than CRASH_RETRIES + 1 times keeps killing
    its workers (an image too large for the node's memory), and is reported instead of run again."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def start(self, key: str) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]


@dataclass(frozen=True)
class Pool:
    min_workers: int
    max_workers: int
    cpus: float  # reserved per worker
    gpus: float
    threads: int  # torch threads per worker


def resources(cluster: dict[str, float], nodes: int, workers: str | int | None, gpus_per_worker: float | None,
              files: int) -> Pool:
    """The actor pool for a cluster: one GPU per worker where there are GPUs, else CPU workers that
    share the cores (torch threads = the cores a worker holds)."""
    gpus, cpus = cluster.get("GPU", 0.0), max(1.0, cluster.get("CPU", 1.0))
    per_gpu = (1.0 if gpus else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
    if per_gpu < 0 or (per_gpu > 1 and per_gpu != int(per_gpu)):
        raise UsageError(f"--ray-gpus-per-worker must be a fraction of one GPU or a whole number, not {per_gpu:g}")
    if per_gpu and not gpus:
        raise UsageError("--ray-gpus-per-worker: the Ray cluster has no GPUs (0 runs the workers on CPUs)")
    if workers is None:
        low = high = max(1, int(gpus // per_gpu)) if per_gpu else max(1, nodes)
    else:
        low, high = parse_workers(workers)
    high = max(1, min(high, files))  # never more workers than files
    low = min(low, high)
    cores = max(1, int(cpus // high))
    return Pool(low, high, cpus=1.0 if per_gpu else float(cores), gpus=per_gpu, threads=cores)


def parse_workers(text: str | int) -> tuple[int, int]:
    """`4` → (4, 4); `2-8` → a pool of 2 that grows to 8 while there is work."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < int(match.group(1))):
        raise UsageError(f"--ray-workers takes N or MIN-MAX (e.g. 4 or 2-8), not {text!r}")
    low = int(match.group(1))
    return low, int(match.group(2) or low)


def check_settings(settings: dict[str, Any], address: str | None = None) -> int:
    """Check the Upscaler's arguments on the driver, before Ray starts; returns the model's own scale (for
    output names), from the manifest where it knows it (a checkpoint of the user's is read to tell).
    With `local`, the weights are also put into this machine's cache now: a run --offline without them
    fails here, in one line, and the workers load them from the cache."""
    from upscale import manifest
    from upscale import weights as wt
    from upscale.upscaler import Upscaler

    up = Upscaler(**settings)  # bad --outscale, --alpha ... are usage errors here
    if up.weights is not None:
        return up.model.scale
    if address == LOCAL:
        wt.resolve_checkpoint(up.model_name, up.requested_scale, None, up.offline, up.quiet)
    return manifest.resolve(up.model_name, up.requested_scale).scale


def _failure(exc: BaseException) -> UpscaleError:
    """The error of a job that could not run at all (a worker that cannot start), as one line: ours when
    the remote traceback carries one of our errors, else Ray's first line."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        if isinstance(e, UpscaleError):
            return e
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    match = re.search(r"upscale\.errors\.\w+: (.+)", str(exc))
    return UpscaleError(match.group(1) if match else f"the Ray job failed: {_first_line(exc)} (--debug shows more)")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
