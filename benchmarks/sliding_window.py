"""Sliding-window prediction of a whole volume: attnseg's inferer vs MONAI's default path.

Every configuration runs in a fresh subprocess (so peak memory, malloc state and oneDNN
caches do not leak between them) on the same input and the same randomly initialised
network (registered ``unet``, 4 → 4 channels, features given by ``--features``):

* ``monai``: ``monai.inferers.sliding_window_inference(x, roi, sw_batch, net, overlap,
  mode="gaussian")`` with the plain model (MONAI's default settings otherwise);
* ``attnseg``: ``SlidingWindowInferer(roi, overlap, sw_batch, "gaussian")`` with
  ``enable_cpu_fastpaths()`` and ``prepare_model(net, channels_last=False)``, fp32 (what
  ``attnseg predict`` does);
* ``attnseg-nomalloc``: the same without the glibc malloc tuning;
* ``attnseg-bf16``: the same with ``precision="bf16"``. Where this CPU has no native oneDNN bf16
  (AVX-512 BF16 / AMX) bf16 is emulated, far too slow to time on a whole volume: its row then
  says "emulated, speed not measured" and carries the output check of ``attnseg-bf16`` against
  ``attnseg`` fp32 on a small volume (``--check-shape``, ROI ``--check-roi``) instead.

Columns: wall time of the whole prediction, CPU time (user + sys; on a shared machine the
wall time also counts waiting for a core), time outside the network (wall − time spent in
the network calls), kernel (sys) CPU time, peak RSS of the process (``ru_maxrss``) and its
increase during the prediction, max |difference| to MONAI's output of the same
configuration and, for bf16, the Dice of the argmax labels against the fp32 labels.

    python benchmarks/sliding_window.py --quick          # small volume, a few minutes
    python benchmarks/sliding_window.py                  # 1x4x240x240x155, ROI 128 and 96, batch 1 and 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _child(a: argparse.Namespace) -> None:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from attnseg.models import create_model

    torch.manual_seed(0)
    net = create_model("unet", in_channels=4, out_channels=4, features=tuple(a.features)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, 4, *a.shape), generator=g)
    roi = (a.roi,) * 3
    stats = {"net_s": 0.0, "calls": 0}

    def timed(model):
        def f(w):
            t = time.perf_counter()
            y = model(w)
            stats["net_s"] += time.perf_counter() - t
            stats["calls"] += 1
            return y
        return f

    if a.impl == "monai":
        from monai.inferers import sliding_window_inference

        def run():
            with torch.no_grad():
                return sliding_window_inference(x, roi, a.sw_batch, timed(net), overlap=a.overlap, mode="gaussian")
    else:
        from attnseg.infer.fastpath import enable_cpu_fastpaths, prepare_model
        from attnseg.infer.sliding_window import SlidingWindowInferer

        if not a.no_malloc:
            enable_cpu_fastpaths()
        prepare_model(net, 3, channels_last=False)  # as attnseg predict does
        inferer = SlidingWindowInferer(roi, overlap=a.overlap, sw_batch_size=a.sw_batch, blend="gaussian",
                                       precision="bf16" if a.impl.endswith("bf16") else "fp32")

        def run():
            return inferer(x, timed(net))

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = run()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    np.save(a.save, out.float().numpy())
    res = {"wall_s": wall, "net_s": stats["net_s"], "outside_s": wall - stats["net_s"], "calls": stats["calls"],
           "sys_s": r1.ru_stime - r0.ru_stime, "user_s": r1.ru_utime - r0.ru_utime,
           "peak_mb": r1.ru_maxrss / 1024, "peak_increase_mb": (r1.ru_maxrss - rss0) / 1024}
    print(json.dumps(res))


def _label_dice(ref: np.ndarray, other: np.ndarray) -> float:
    """Mean Dice over the foreground classes of the argmax labels of two (1, C, ...) logit maps."""
    a, b = np.argmax(ref, 1), np.argmax(other, 1)
    dices = []
    for c in range(1, ref.shape[1]):
        sa, sb = a == c, b == c
        den = sa.sum() + sb.sum()
        dices.append(2 * (sa & sb).sum() / den if den else 1.0)
    return float(np.mean(dices))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1x4x96x96x64 volume, ROI 64 and 48")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="volume shape (default 240 240 155)")
    p.add_argument("--rois", type=int, nargs="+", default=None, help="cubic ROI sizes (default 128 96)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="window batch sizes")
    p.add_argument("--impls", default="monai,attnseg,attnseg-bf16", help="comma list of monai, attnseg, attnseg-bf16, "
                                                                        "attnseg-nomalloc")
    p.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="U-Net features per level")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    p.add_argument("--jsonl", type=Path, default=None, help="append each finished row to this JSON-lines file")
    p.add_argument("--force-bf16", action="store_true", help="time bf16 rows even where bf16 is emulated")
    p.add_argument("--check-shape", type=int, nargs=3, default=[48, 48, 40],
                   help="volume of the output check that replaces timing where bf16 is emulated")
    p.add_argument("--check-roi", type=int, default=32)
    # child mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--roi", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sw-batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--no-malloc", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.shape is None:
        a.shape = [96, 96, 64] if a.quick else [240, 240, 155]
    if a.rois is None:
        a.rois = [64, 48] if a.quick else [128, 96]
    if a.child:
        _child(a)
        return

    from attnseg.infer.fastpath import onednn_bf16_supported
    from attnseg.report.table import markdown_table, print_table

    impls = [s.strip() for s in a.impls.split(",") if s.strip()]
    emulated = not (a.force_bf16 or onednn_bf16_supported())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def child(impl: str, roi: int, swb: int, shape: list[int]) -> tuple[dict, np.ndarray]:
            save = os.path.join(tmp, f"{impl}_{roi}_{swb}_{'x'.join(map(str, shape))}.npy")
            cmd = [sys.executable, __file__, "--child", "--impl", impl.replace("-nomalloc", ""),
                   "--roi", str(roi), "--sw-batch", str(swb), "--save", save, "--overlap", str(a.overlap),
                   "--threads", str(a.threads), "--shape", *map(str, shape),
                   "--features", *map(str, a.features)] + (["--no-malloc"] if "nomalloc" in impl else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"configuration {impl} roi {roi} batch {swb} shape {shape} failed")
            return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(save, mmap_mode="r")

        check: dict[str, dict] = {}
        for roi in a.rois:
            for swb in a.batches:
                outs = {}
                for impl in impls:
                    if impl.endswith("bf16") and emulated:
                        # a row never disappears: emulated bf16 is checked on a small volume, not timed
                        if impl not in check:
                            _, ref = child("attnseg", a.check_roi, 1, a.check_shape)
                            _, low = child(impl, a.check_roi, 1, a.check_shape)
                            check[impl] = {"max_abs_diff_vs_fp32": float(np.abs(low - ref).max()),
                                           "label_dice_vs_fp32": _label_dice(ref, low),
                                           "note": f"emulated bf16: speed not measured; output checked on "
                                                   f"1x4x{'x'.join(map(str, a.check_shape))}, ROI {a.check_roi}"}
                        rows.append({"impl": impl, "roi": roi, "sw_batch": swb,
                                     "wall_s": "emulated, speed not measured", **check[impl]})
                        continue
                    res, outs[impl] = child(impl, roi, swb, a.shape)
                    row = {"impl": impl, "roi": roi, "sw_batch": swb, **res}
                    if "monai" in outs and impl != "monai":
                        row["max_abs_diff"] = float(np.abs(outs[impl] - outs["monai"]).max())
                    if impl.endswith("bf16") and "attnseg" in outs:
                        row["max_abs_diff_vs_fp32"] = float(np.abs(outs[impl] - outs["attnseg"]).max())
                        row["label_dice_vs_fp32"] = _label_dice(outs["attnseg"], outs[impl])
                    rows.append(row)
                    if a.jsonl:
                        with open(a.jsonl, "a") as fh:
                            fh.write(json.dumps({**row, "shape": a.shape, "features": a.features}) + "\n")
                    print(f"  done {impl} roi {roi} batch {swb}: {res['wall_s']:.1f} s", file=sys.stderr, flush=True)
                base = next((r for r in rows if r["impl"] == "monai" and r["roi"] == roi and r["sw_batch"] == swb),
                            None)
                for r in rows:
                    if base is not None and r["roi"] == roi and r["sw_batch"] == swb and \
                            isinstance(r["wall_s"], float):
                        r["speedup"] = base["wall_s"] / r["wall_s"]
                del outs
    for r in rows:
        for k, v in list(r.items()):
            if isinstance(v, float):
                r[k] = round(v, 6 if k.startswith("max_abs_diff") else 3)
    for r in rows:
        if "user_s" in r:
            r["cpu_s"] = round(r["user_s"] + r["sys_s"], 3)
    cols = ["impl", "roi", "sw_batch", "wall_s", "speedup", "cpu_s", "net_s", "outside_s", "sys_s", "peak_mb",
            "peak_increase_mb", "max_abs_diff", "max_abs_diff_vs_fp32", "label_dice_vs_fp32", "note"]
    cols = [c for c in cols if any(c in r for r in rows)]
    import torch

    title = (f"sliding window, volume 1x4x{'x'.join(map(str, a.shape))}, unet features {a.features}, overlap "
             f"{a.overlap}, gaussian, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(rows, cols, title=title)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(f"{title}\n\n{markdown_table(rows, cols)}\n")


if __name__ == "__main__":
    main()
