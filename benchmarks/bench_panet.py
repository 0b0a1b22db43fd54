"""Pyramid attention: peak memory and time of the chunked `attend` against the authors' dense formulation.

    python benchmarks/bench_panet.py                  # 48², 96², 128², 192² at 64 channels (+ 256 at 48², 96²)
    python benchmarks/bench_panet.py --sizes 96 --width 256
    python benchmarks/bench_panet.py --model --sizes 48 96 --threads 1   # the whole PA-EDSR ×4 network

--model: the whole network (PA-EDSR ×4 at the authors' size, the official checkpoint layout with
random weights: speed does not depend on the values) on a sizes² input, this module's forward
against the same network with the authors' attention (`attend_dense`: all scores at once, conv2d /
softmax / conv_transpose2d as their code computes it), alternating, in one process, best of
`--repeat`. Times are wall and CPU (user + system, all threads) seconds; "×" is the authors' time over
ours (above 1: ours is faster).

Each case runs in a fresh subprocess. Peak memory is that process's resident-set high-water mark
(getrusage ru_maxrss) after the call minus the same mark just before it, once the inputs exist and
a tiny warm-up call has started the thread pools: it counts every byte the call made resident
(torch's CPU allocations are invisible to tracemalloc), allocator overhead included. Time is the
wall time of one call (best of three for the small cases), and its CPU time (user + system, all
threads), which is less disturbed when other processes share the cores. Both methods get the same random
query/key/value maps (the module's 1×1 projections are outside the comparison: they are the same
in both). The dense case is skipped when its own estimate exceeds 16 GB or 60% of available memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's upscale, not an installed one

SIZES = (48, 96, 128, 192)
DENSE_LIMIT = 16e9


def _features(n: int, c: int, cm: int):
    import torch

    from upscale.models import panet

    g = torch.Generator().manual_seed(0)
    query = torch.randn(cm, n, n, generator=g) * 0.5
    keys, values = [], []
    for h, w in panet.level_sizes(n, n, panet.pyramid_scales(5)):
        keys.append(torch.randn(cm, h, w, generator=g) * 0.5)
        values.append(torch.randn(c, h, w, generator=g))
    return query, keys, values


def model_case(sizes: list[int], threads: int, repeat: int) -> None:
    """The whole PA-EDSR ×4 network, ours against the authors' attention, same weights, same process."""
    import json
    from pathlib import Path

    import torch

    from upscale.models import from_state_dict, panet

    torch.set_grad_enabled(False)
    if threads:
        torch.set_num_threads(threads)
    shared = Path(os.environ.get("UPSCALE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
    layout = json.loads((shared / "reference" / "checkpoint_layouts.json").read_text())["pa-edsr_x4"]
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v["shape"], generator=g) * 0.02 if getattr(torch, v["dtype"]).is_floating_point
          else torch.zeros(v["shape"], dtype=getattr(torch, v["dtype"])) for k, v in layout["keys"].items()}
    model = from_state_dict(sd).eval()
    ours = panet.attend

    def dense(*args, chunk=None, **kwargs):
        return panet.attend_dense(*args, **kwargs)

    def authors(x: torch.Tensor) -> torch.Tensor:
        panet.attend = dense  # the module looks `attend` up at each call
        try:
            return model.net(x)
        finally:
            panet.attend = ours

    print(f"PA-EDSR ×4 (official layout, random weights), threads {torch.get_num_threads()}, best of {repeat}")
    print("| input | ours wall s | ours CPU s | authors' wall s | authors' CPU s | × wall | × CPU | max |diff| |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        x = torch.rand(1, 3, n, n, generator=g)
        model.net(x[:, :, :16, :16])  # warm-up
        best = {"ours": [float("inf")] * 2, "authors": [float("inf")] * 2}
        outs = {}
        for _ in range(repeat):
            for name, fn in (("ours", model.net), ("authors", authors)):
                t, c0 = time.perf_counter(), _cpu_seconds()
                outs[name] = fn(x)
                wall, cpu = time.perf_counter() - t, _cpu_seconds() - c0
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
        diff = (outs["ours"] - outs["authors"]).abs().max().item()
        (ow, oc), (aw, ac) = best["ours"], best["authors"]
        print(f"| {n}² | {ow:.2f} | {oc:.2f} | {aw:.2f} | {ac:.2f} | {aw / ow:.2f} | {ac / oc:.2f} | {diff:.1e} |",
              flush=True)


def run_case(method: str, n: int, c: int, chunk: int | None, threads: int) -> dict:
    """In the child process: one measured call."""
    import torch

    from upscale.models import panet

    torch.set_grad_enabled(False)
    if threads:
        torch.set_num_threads(threads)
    cm = max(1, c // 8)
    fn = panet.attend if method == "chunked" else panet.attend_dense
    kwargs = {"chunk": chunk} if method == "chunked" else {}
    fn(*_features(8, c, cm), **kwargs)  # warm-up: thread pools, kernels
    args = _features(n, c, cm)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, cpu = [], []
    for _ in range(3 if n <= 48 else 1):
        t, c0 = time.perf_counter(), _cpu_seconds()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
        cpu.append(_cpu_seconds() - c0)
        del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"peak": peak, "time": min(times), "cpu": min(cpu)}


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def dense_estimate(n: int, c: int) -> float:
    """Bytes of the dense formulation: scores, scaled scores and softmax, plus the value patches."""
    from upscale.models import panet

    n_keys = sum(h * w for h, w in panet.level_sizes(n, n, panet.pyramid_scales(5)))
    return 4 * (3 * n_keys * n * n + n_keys * 9 * c + 9 * c * n * n)


def spawn(method: str, n: int, c: int, chunk: int | None, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(n), str(c), str(chunk or 0), str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    from upscale.infer.memory import available_host_memory

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--width", type=int, nargs="+", default=[64], help="channels C (matching width C/8)")
    ap.add_argument("--full-width-sizes", type=int, nargs="*", default=[48, 96], help="sizes also run at 256")
    ap.add_argument("--chunk", type=int, default=0, help="queries per chunk (0: the module's default)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--model", action="store_true", help="the whole network, ours against the authors' attention")
    ap.add_argument("--repeat", type=int, default=2, help="--model: timed runs per case (the fastest counts)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.model:
        model_case(a.sizes if a.sizes != list(SIZES) else [48, 96], a.threads, a.repeat)
        return
    if a.child:
        method, n, c, chunk, threads = a.child
        print(json.dumps(run_case(method, int(n), int(c), int(chunk) or None, int(threads))))
        return

    from upscale.models import panet

    cases = [(n, c) for c in a.width for n in a.sizes]
    cases += [(n, 256) for n in a.full_width_sizes if 256 not in a.width]
    threads = a.threads or "default"
    print(
        f"{os.cpu_count()} cpus, threads {threads}; chunk: {a.chunk or 'default'}; MB = RSS high-water delta;"
    )
    print("model MB = panet.attention_bytes(..., include_features=False); ×: dense / chunked")
    head = f"{'size':>8} {'C':>4} | {'dense MB':>9} {'dense s':>8} | {'chunked MB':>10} {'model MB':>9}"
    head += f" {'chunked s':>9} | {'mem ×':>6} {'speed ×':>7} {'cpu ×':>6}"
    print(head)
    print("-" * len(head))
    for n, c in cases:
        est = dense_estimate(n, c)
        if est > min(DENSE_LIMIT, 0.6 * available_host_memory()):
            dense = {"error": f"skipped: needs ~{est / 1e9:.0f} GB"}
        else:
            dense = spawn("dense", n, c, None, a.threads)
        chunked = spawn("chunked", n, c, a.chunk or None, a.threads)
        model = panet.attention_bytes(n, n, c, chunk=a.chunk or None, include_features=False) / 2**20
        ok = "error" not in dense and "error" not in chunked
        d_mb = f"{dense['peak'] / 2**20:9.0f}" if "error" not in dense else f"{'—':>9}"
        d_s = f"{dense['time']:8.2f}" if "error" not in dense else f"{'—':>8}"
        c_mb = f"{chunked['peak'] / 2**20:10.0f}" if "error" not in chunked else f"{'error':>10}"
        c_s = f"{chunked['time']:9.2f}" if "error" not in chunked else f"{'—':>9}"
        ratio = f"{dense['peak'] / chunked['peak']:6.1f}" if ok else f"{'—':>6}"
        speed = f"{dense['time'] / chunked['time']:7.2f}" if ok else f"{'—':>7}"
        cpu = f"{dense['cpu'] / chunked['cpu']:6.2f}" if ok else f"{'—':>6}"
        print(f"{n:>4}×{n:<3} {c:>4} | {d_mb} {d_s} | {c_mb} {model:9.0f} {c_s} | {ratio} {speed} {cpu}")
        for name, r in (("dense", dense), ("chunked", chunked)):
            if "error" in r:
                print(f"         {name}: {r['error']}")


if __name__ == "__main__":
    main()
