"""Describe this machine and measure its peak convolution throughput.

Prints (Markdown) the CPU model, cores, memory, relevant instruction-set extensions, the
versions of Python / PyTorch / MKL / oneDNN / MONAI, and the measured throughput of one large
3×3×3 convolution in channels-last-3d layout, in fp32 and bf16:

* input ``1 × C × S³`` (default C = 64, S = 64) → C channels, padding 1: ``2·C·C·27·S³`` FLOP
  per forward (a multiply-add counts 2, as in ``torch.utils.flop_counter``);
* eval mode under ``torch.inference_mode``, after warm-up runs; min / median / max GFLOP/s over
  ``--repeats`` timed runs. The *peak* quoted by the other benchmarks is the median of the
  fp32 runs (the max is an optimistic outlier on a shared machine).

Batch 1 with 64 channels is large enough for PyTorch to route the convolution to oneDNN;
channels-last-3d is the layout oneDNN runs fastest on CPUs.

    python benchmarks/machine.py                 # 5 repeats
    python benchmarks/machine.py --quick         # S = 48, 3 repeats
    python benchmarks/machine.py --json out.json # also write the numbers as JSON

Importable: :func:`describe_machine`, :func:`measure_conv_peak`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# instruction-set flags worth reporting for convolution throughput (from /proc/cpuinfo)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_tile",
             "avx_vnni")


def _cpuinfo() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    if m:
        info["cpu"] = m.group(1).strip()
    m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    if m:
        flags = set(m.group(1).split())
        info["flags"] = [f for f in ISA_FLAGS if f in flags]
    sockets = set(re.findall(r"^physical id\s*:\s*(\d+)$", text, re.M))
    cores = re.search(r"^cpu cores\s*:\s*(\d+)$", text, re.M)
    if cores:
        info["physical_cores"] = int(cores.group(1)) * max(len(sockets), 1)
    return info


def _memory_gib() -> float | None:
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        return None


def _version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(mod)
    except PackageNotFoundError:
        return None


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, ISA flags and library versions (no timing)."""
    import torch

    cpu = _cpuinfo()
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.\-]+)", config)
    dnn = re.search(r"MKL-DNN v([\w.]+)", config) or re.search(r"oneDNN v([\w.]+)", config)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    return {
        "cpu": cpu["cpu"], "logical_cpus": os.cpu_count(), "usable_cpus": affinity,
        "physical_cores": cpu.get("physical_cores"), "isa": cpu["flags"], "memory_gib": _memory_gib(),
        "os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": mkl.group(1) if mkl else None, "onednn": dnn.group(1) if dnn else None,
        "numpy": _version("numpy"), "monai": _version("monai"), "onnxruntime": _version("onnxruntime"),
    }


def measure_conv_peak(dtype: str = "fp32", channels: int = 64, size: int = 64, repeats: int = 5,
                      warmup: int = 2) -> dict[str, Any]:
    """GFLOP/s of a ``channels → channels`` 3×3×3 conv on ``1 × channels × size³`` in channels-last-3d.

    ``dtype``: ``fp32`` or ``bf16`` (weights and input in bfloat16). Returns min/median/max
    GFLOP/s, the median seconds per forward, and the FLOP count.
    """
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False).eval().to(dt)
    conv = conv.to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, channels, size, size, size).to(dt).contiguous(memory_format=torch.channels_last_3d)
    flop = 2.0 * channels * channels * 27 * size**3
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            conv(x)
        for _ in range(repeats):
            t = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - t)
    rates = sorted(flop / t / 1e9 for t in times)
    return {"dtype": dtype, "shape": f"1x{channels}x{size}x{size}x{size}", "GFLOP": flop / 1e9,
            "median_s": statistics.median(times), "GFLOP/s_min": rates[0],
            "GFLOP/s_median": statistics.median(rates), "GFLOP/s_max": rates[-1], "repeats": repeats}


def bf16_peak(fp32: dict[str, Any], channels: int, size: int, repeats: int) -> dict[str, Any]:
    """bf16 throughput, probed on a small convolution first.

    Without native bf16 instructions PyTorch can fall back to a reference kernel thousands of
    times slower than fp32 (measured: 0.06 GFLOP/s on an AVX2-only CPU, two minutes per call at
    32³); the full-size measurement is then skipped and the probe's figure is reported instead.
    """
    probe = measure_conv_peak("bf16", 16, 8, repeats=1, warmup=1)
    if probe["GFLOP/s_median"] < 0.05 * fp32["GFLOP/s_median"]:
        probe["note"] = (f"slow fallback path: only the 1x16x8^3 probe was run "
                         f"({probe['GFLOP/s_median']:.2f} GFLOP/s)")
        return probe
    return measure_conv_peak("bf16", channels, size, repeats)


def _g(v: float) -> str:
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"


def _markdown(machine: dict[str, Any], peaks: list[dict[str, Any]]) -> str:
    rows = [("CPU", machine["cpu"]),
            ("CPUs (logical / usable / physical cores)",
             f"{machine['logical_cpus']} / {machine['usable_cpus']} / {machine.get('physical_cores') or '?'}"),
            ("Memory", f"{machine['memory_gib']} GiB" if machine["memory_gib"] else "?"),
            ("ISA extensions", ", ".join(machine["isa"]) or "none of " + ", ".join(ISA_FLAGS)),
            ("PyTorch CPU capability", machine["torch_cpu_capability"]),
            ("OS", machine["os"]),
            ("Python / PyTorch / threads", f"{machine['python']} / {machine['torch']} / {machine['torch_threads']}"),
            ("MKL / oneDNN", f"{machine['mkl']} / {machine['onednn']}"),
            ("NumPy / MONAI / onnxruntime", f"{machine['numpy']} / {machine['monai']} / {machine['onnxruntime']}")]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "Peak convolution throughput (3×3×3 conv, channels-last-3d, batch 1, inference mode):", "",
              "| dtype | input | GFLOP per call | GFLOP/s min | GFLOP/s median | GFLOP/s max | repeats | note |",
              "|---|---|---|---|---|---|---|---|"]
    for p in peaks:
        if "error" in p:
            lines.append(f"| {p['dtype']} | – | – | – | – | – | – | {p['error']} |")
            continue
        lines.append(f"| {p['dtype']} | {p['shape']} | {_g(p['GFLOP'])} | {_g(p['GFLOP/s_min'])} | "
                     f"{_g(p['GFLOP/s_median'])} | {_g(p['GFLOP/s_max'])} | {p['repeats']} | {p.get('note', '')} |")
    fp32 = next((p for p in peaks if p["dtype"] == "fp32" and "error" not in p), None)
    bf16 = next((p for p in peaks if p["dtype"] == "bf16" and "error" not in p), None)
    if fp32 and bf16:
        lines += ["", f"bf16 / fp32 throughput ratio (medians): {bf16['GFLOP/s_median'] / fp32['GFLOP/s_median']:.2f}"
                      + ("" if "avx512_bf16" in machine["isa"] or "amx_bf16" in machine["isa"]
                         else " (this CPU has no native bf16 dot-product instructions, so bf16 is emulated)")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="S = 48, 3 repeats")
    p.add_argument("--size", type=int, default=64, help="edge S of the 1 x C x S^3 input")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeats = 48, 3
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe_machine()
    peaks = [measure_conv_peak("fp32", args.channels, args.size, args.repeats)]
    try:
        peaks.append(bf16_peak(peaks[0], args.channels, args.size, args.repeats))
    except RuntimeError as exc:  # bf16 conv3d unsupported by this build
        peaks.append({"dtype": "bf16", "error": str(exc).splitlines()[0][:80]})
    print(_markdown(machine, peaks))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "conv_peak": peaks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
