"""`upscale models`: the models you can use, as a table or JSON. No torch: it reads the manifest and the
cache records only."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from upscale.cli import options
from upscale.cli.report import data_console, print_json

HELP = ("The models you can use: scales, size, license, and whether the weights are cached. The default "
        "(without -m) is vapsr at x4.\n\n"
        "Examples:\n\n\b\n"
        "  upscale models                          the table\n"
        "  upscale models --json                   every model and scale, for scripts")


def models_cmd(as_json: options.Json = False, debug: options.Debug = False) -> None:
    from upscale import cache, manifest, weights

    rows = weights.catalog()
    if as_json:
        print_json(rows)
        return
    out = data_console()  # piped: never truncate
    out.print(table(rows, wide=out.width >= 120))
    out.print(f"\nDefault (without -m): {manifest.DEFAULT_MODEL} x{manifest.default_scale(manifest.DEFAULT_MODEL)}.  "
              f"* not known for every scale.  Weights cache: {cache.cache_dir()}", highlight=False)


def _span(values: list[float | None], scaled: float, unit: str) -> str:
    """'0.33–0.34M' over the known values; '*' where some are not known; '?' when none is."""
    known = sorted({x / scaled for x in values if x is not None})
    if not known:
        return "?"
    digits = 2 if known[-1] < 10 else 1
    text = f"{known[0]:.{digits}f}" if len(known) == 1 else f"{known[0]:.{digits}f}–{known[-1]:.{digits}f}"
    return f"{text}{unit}" + ("*" if None in values else "")


def table(rows: list[dict[str, Any]], wide: bool = True):
    """The rich Table `upscale models` prints: one line per model name (`wide`: with descriptions)."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, collapse_padding=not wide, header_style="bold")
    columns = ["name", "scales", "params", "size", "license", "source", "cached"] + (["description"] if wide else [])
    for col in columns:
        table.add_column(col, justify="right" if col in ("params", "size") else "left", no_wrap=col != "description")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    for name, group in by_name.items():
        cached = [r["scale"] for r in group if r["cached"]]
        hosts = {_host(s) for r in group for s in r["sources"][:1]}
        cells = [
            name,
            ",".join(str(r["scale"]) for r in group),
            _span([r["parameters"] for r in group], 1e6, "M"),
            _span([r["size"] for r in group], 1e6, " MB"),
            group[0]["license"],
            ", ".join(sorted(hosts)) or "manual",
            "all" if len(cached) == len(group) else (" ".join(f"x{s}" for s in cached) or "no"),
        ]
        table.add_row(*cells, *([group[0]["title"]] if wide else []))
    return table


def _host(source: str) -> str:
    if source.startswith("hf://"):
        return "HF Hub"
    host = urlsplit(source).hostname or "?"
    return "GitHub" if host == "github.com" else host
