"""Figure of phantom cases: the easy and the realistic generator side by side (docs/data.md).

``python -m attnseg.report.phantom_figure OUT.png [--cases 4] [--seed 0]`` renders, for case
indices 0..N-1, the axial slice with the most tumour of the easy and of the realistic
phantom (T1ce, FLAIR, T2 and the labels) in one PNG.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnseg.data.synth import synth_brats_case
from attnseg.runtime.optional import pyplot

# label colours (RGBA) for the overlay: NCR/NET red, ED green, ET yellow (as the report's)
_LABEL_RGBA = {1: (0.84, 0.15, 0.16, 0.75), 2: (0.17, 0.63, 0.17, 0.55), 4: (0.9, 0.72, 0.0, 0.85)}


def _slice_with_most_tumour(seg: np.ndarray) -> int:
    return int(np.argmax((seg > 0).sum(axis=(0, 1))))


def _show(ax, img2d: np.ndarray, title: str | None) -> None:  # noqa: ANN001 (matplotlib axes)
    hi = float(np.percentile(img2d[img2d > 0], 99.5)) if (img2d > 0).any() else 1.0
    ax.imshow(np.rot90(img2d), cmap="gray", vmin=0, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def phantom_figure(path: str | Path, cases: Sequence[int] = (0, 1, 2, 3), seed: int = 0, spacing: int = 2) -> Path:
    """Write the easy-vs-realistic figure: one row per case index, 4 panels per generator."""
    plt = pyplot("the phantom figure")  # optional: the [report] extra

    cols = ("t1ce", "flair", "t2", "labels")
    fig, axes = plt.subplots(len(cases), 2 * len(cols), figsize=(2.0 * 2 * len(cols), 2.1 * len(cases)))
    axes = np.atleast_2d(axes)
    for r, idx in enumerate(cases):
        for g, diff in enumerate(("easy", "realistic")):
            c = synth_brats_case(seed, idx, spacing, diff)
            seg = c["seg"]
            z = _slice_with_most_tumour(seg)
            note = ""
            if diff == "realistic":
                info = c["info"]
                bits = [f"site {info['site']['site']}"]
                if info["thick_mm"]:
                    bits.append(f"{info['thick_mm']:.1f} mm slices")
                if info["ghost"]:
                    bits.append(f"ghost on {info['ghost']['modality']}")
                n_sat = sum(t["satellite"] for t in info["tumours"])
                if n_sat:
                    bits.append(f"{n_sat} satellite(s)")
                note = ", ".join(bits)
            for k, name in enumerate(cols):
                ax = axes[r, g * len(cols) + k]
                title = f"{diff} {idx}: {name}" if r == 0 or k == 0 else None
                if name == "labels":
                    _show(ax, c["images"]["t1ce"][:, :, z], title)
                    rgba = np.zeros((*seg.shape[:2], 4))
                    for v, col in _LABEL_RGBA.items():
                        rgba[seg[:, :, z] == v] = col
                    ax.imshow(np.rot90(rgba), interpolation="nearest")
                else:
                    _show(ax, c["images"][name][:, :, z].astype(np.float32), title)
                if k == 0:
                    ax.set_ylabel(f"case {idx}, z={z}" + (f"\n{note}" if note else ""), fontsize=7)
    fig.suptitle("Phantom cases: easy (left four columns) vs realistic (right four columns), "
                 "axial slice with the most tumour; labels: NCR/NET red, ED green, ET yellow", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor="white")
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(phantom_figure(a.out, range(a.cases), a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
