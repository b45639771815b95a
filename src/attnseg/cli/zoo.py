"""``attnseg zoo``: the model zoo card, ``docs/model_zoo.md``.

One row per valid (backbone, attention) combination — validity comes from
:func:`attnseg.models.sites.valid_sites` — with the sites used, parameter count, GFLOPs at a
stated input size (``torch.utils.flop_counter.FlopCounterMode``, multiply-add = 2 FLOPs) and
CPU forward latency (eval mode, no gradients, median of a few repeats after one warm-up).
The attention is placed at the backbone's default ``attention_at`` sites that are valid for
the module, or at every valid site when none of the defaults is (gates → ``skip``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="write the model zoo card (docs/model_zoo.md)",
                       description="Build every valid backbone x attention combination, measure parameters, "
                                   "GFLOPs and CPU latency, and write a Markdown card.")
    p.add_argument("--out", default=None,
                   help="Markdown file to write (default: docs/model_zoo.md of the attnseg source checkout this "
                        "command runs from; required elsewhere)")
    p.add_argument("--dims", type=int, choices=(2, 3), default=3, help="spatial dims (default: %(default)s)")
    p.add_argument("--size", type=int, default=32, help="cubic (square) input size (default: %(default)s)")
    p.add_argument("--backbones", nargs="*", default=None, help="restrict to these backbones")
    p.add_argument("--attention", nargs="*", default=None, help="restrict to these attention modules")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes per model (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's setting)")
    p.set_defaults(func=run)


def default_card_path() -> str:
    """``docs/model_zoo.md`` of the source checkout attnseg is imported from (an editable install);
    an installed package has no docs folder, so the caller must name the file."""
    from pathlib import Path

    import attnseg

    root = Path(attnseg.__file__).resolve().parents[2]
    if (root / "docs").is_dir() and (root / "pyproject.toml").is_file():
        return str(root / "docs" / "model_zoo.md")
    raise ValueError("attnseg is not running from a source checkout: give --out FILE for the model zoo card")


def _default_sites(backbone: str) -> tuple[str, ...]:
    """Where the backbone puts attention when ``attention_at`` is not given (its ``default_sites`` tag)."""
    from attnseg.models import get_model_entry

    return tuple(get_model_entry(backbone).tags["default_sites"])


def sites_for(backbone: str, attention: str, dims: int) -> tuple[str, ...]:
    """Sites the zoo uses: the backbone's default sites that are valid, else every valid site."""
    from attnseg.models.sites import valid_sites

    valid = valid_sites(backbone, attention, dims)
    chosen = tuple(s for s in _default_sites(backbone) if s in valid)
    return chosen or valid


def measure(backbone: str, attention: str | None, sites: tuple[str, ...], dims: int, size: int,
            latency: bool, repeats: int) -> dict[str, Any]:
    """Parameters, GFLOPs and (optionally) median forward seconds of one configuration."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from attnseg.models import count_parameters, create_model

    shape = (size,) * dims
    kw: dict[str, Any] = dict(spatial_dims=dims, in_channels=1, out_channels=2, input_size=shape)
    if attention is not None:
        kw.update(attention=attention, attention_at=sites)
    torch.manual_seed(0)
    model = create_model(backbone, **kw).eval()
    x = torch.randn(1, 1, *shape)
    row: dict[str, Any] = {"params": count_parameters(model)}
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        row["gflops"] = counter.get_total_flops() / 1e9
        if latency:
            model(x)  # warm-up
            times = []
            for _ in range(max(repeats, 1)):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
            row["latency_ms"] = 1000 * sorted(times)[len(times) // 2]
    return row


def build_rows(dims: int, size: int, backbones: list[str] | None = None, attention: list[str] | None = None,
               latency: bool = True, repeats: int = 3, progress: bool = True) -> list[dict[str, Any]]:
    """One row per backbone (no attention) and per valid (backbone, attention) pair."""
    from attnseg.models import get_model_entry
    from attnseg.models.sites import list_backbones, list_plugin_attention

    bbs = backbones or [b for b in list_backbones() if dims in get_model_entry(b).dims]
    atts = attention or list_plugin_attention()
    unknown = [b for b in bbs if b not in list_backbones()]
    if unknown:
        raise ValueError(f"not backbones: {unknown}; choose from {list_backbones()}")
    rows = []
    for b in bbs:
        combos: list[tuple[str | None, tuple[str, ...]]] = [(None, ())]
        combos += [(a, sites_for(b, a, dims)) for a in atts if sites_for(b, a, dims)]
        base = None
        for a, sites in combos:
            row: dict[str, Any] = {"backbone": b, "attention": a or "(none)", "sites": ",".join(sites) or "-"}
            try:
                row.update(measure(b, a, sites, dims, size, latency, repeats))
                if a is None:
                    base = row["params"]
                row["extra_params"] = None if base is None or a is None else row["params"] - base
            except Exception as exc:  # one failing combination must not hide the others
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            rows.append(row)
            if progress:
                print(f"  {b:14s} {row['attention']:16s} {row.get('params', '-')!s:>10} "
                      f"{row.get('gflops', 0):8.3f} GFLOPs {row.get('latency_ms', 0):8.1f} ms {row.get('error', '')}",
                      flush=True)
    return rows


def render(rows: list[dict[str, Any]], dims: int, size: int, latency: bool, repeats: int, threads: int,
           command: str) -> str:
    import torch

    from attnseg.report.table import markdown_table

    n_bb = len({r["backbone"] for r in rows})
    n_att = len({r["attention"] for r in rows} - {"(none)"})
    failed = [r for r in rows if "error" in r]
    shape = "x".join([str(size)] * dims)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Model zoo",
        "",
        f"Generated by `{command}` — do not edit by hand; rerun the command to refresh it.",
        "",
        f"**{n_bb} backbones x {n_att} attention modules, {len(rows)} configurations** "
        f"({len(failed)} failed). Each backbone is built at its registered default configuration with "
        f"1 input channel and 2 classes, {dims}D; the attention module is inserted with its default "
        "keyword arguments at the backbone's default sites that are valid for it (gates: the skip "
        "connections). Validity comes from `attnseg.models.sites.valid_sites`.",
        "",
        "Conditions:",
        "",
        f"- input `1x1x{shape}` (batch 1); `params` = trainable parameters; `extra_params` = added by the "
        "attention; `gflops` = forward FLOPs / 1e9 counted by `torch.utils.flop_counter.FlopCounterMode` "
        "(a multiply-add is 2 FLOPs; element-wise ops, norms and pooling are not counted).",
        (f"- `latency_ms`: CPU forward, eval mode, no gradients, median of {repeats} runs after one warm-up, "
         f"{threads} torch thread(s), torch {torch.__version__}, {cpu}; 1-min load average when the run "
         f"finished: {load:.1f} (the machine may be shared: compare rows, not absolute numbers)."
         if latency else "- latency not measured (`--no-latency`)."),
        "",
    ]
    cols = ["backbone", "attention", "sites", "params", "extra_params", "gflops"] + (["latency_ms"] if latency else [])
    for b in dict.fromkeys(r["backbone"] for r in rows):
        lines += [f"## {b}", "", markdown_table([r for r in rows if r["backbone"] == b and "error" not in r], cols)]
    if failed:
        lines += ["## Failed combinations", "", markdown_table(failed, ["backbone", "attention", "sites", "error"])]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is None:  # decided before the (long) measurements
        args.out = default_card_path()
    if args.size < 1:
        raise ValueError(f"--size must be positive, got {args.size}")
    rows = build_rows(args.dims, args.size, args.backbones, args.attention, not args.no_latency, args.repeats)
    cmd = "attnseg zoo" + "".join(
        f" {flag} {val}" for flag, val in (("--dims", args.dims), ("--size", args.size), ("--repeats", args.repeats))
        if val != {"--dims": 3, "--size": 32, "--repeats": 3}[flag]) + (" --no-latency" if args.no_latency else "") + (
        f" --threads {args.threads}" if args.threads else "")
    text = render(rows, args.dims, args.size, not args.no_latency, args.repeats, torch.get_num_threads(), cmd)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, out)
    failed = sum("error" in r for r in rows)
    print(f"wrote {args.out}: {len(rows)} configurations, {failed} failed")
    return 1 if failed else 0
