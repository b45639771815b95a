"""``attnseg cam``: class-activation / Grad-CAM overlays of a checkpoint on one case."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cam", help="Grad-CAM / CAM overlays of a trained model on one case (PNG)",
        description="Explain a checkpoint's predictions on one case: for each output class, the Grad-CAM map of "
                    "a layer (or the CAM of a 1x1 head) over the preprocessed case, written as PNG overlays "
                    "(grey image + jet map, 3D: the slice where the map is largest).")
    p.add_argument("--checkpoint", "-c", required=True, help="attnseg checkpoint (.pt)")
    p.add_argument("--case", required=True, help="case folder (e.g. a BraTS case) or one image file")
    p.add_argument("--out", "-o", required=True, help="output folder for the PNG files")
    p.add_argument("--layer", default=None,
                   help="module name to explain (default: the last spatial convolution); see --list-layers")
    p.add_argument("--classes", nargs="+", default=None,
                   help="output classes by index or name, e.g. WT TC ET (default: every non-background class)")
    p.add_argument("--method", choices=("gradcam", "cam"), default="gradcam")
    p.add_argument("--roi-size", type=int, nargs="+", default=None, metavar="N",
                   help="size of the region explained, centred on the foreground (default: the training patch)")
    p.add_argument("--full", action="store_true", help="explain the whole preprocessed volume (memory!)")
    p.add_argument("--list-layers", action="store_true", help="print the valid --layer names and exit")
    p.add_argument("--slice-weights", action="store_true",
                   help="models with slice attention (pam, slice): plot the slice-weight profile of every level "
                        "along the slice axis next to the tumour extent, and the key slices kept "
                        "(OUT/slice_weights.png) instead of the CAM maps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnseg.report.cam import cam_for_case, candidate_layers, default_layer

    if args.slice_weights:
        from attnseg.report.slice_weights import case_slice_weights, plot_slice_weights

        res = case_slice_weights(args.checkpoint, args.case, roi_size=args.roi_size)
        for n in res.notes:
            print(f"note: {n}")
        for p in res.profiles:
            kept = int((p.kept >= 0.5).sum())
            print(f"{p.name}: {len(p.weights)} slices, weight {p.weights.min():.3f}..{p.weights.max():.3f}, "
                  f"{kept} slice(s) kept by most channels")
        print(f"wrote {plot_slice_weights(res, Path(args.out) / 'slice_weights.png')}")
        return 0
    if args.list_layers:
        from attnseg.models.checkpoint import build_model_from_checkpoint

        model, _ = build_model_from_checkpoint(args.checkpoint)
        for name in candidate_layers(model):
            print(name)
        print(f"default without an input (definition order): {default_layer(model)}")
        return 0
    res = cam_for_case(args.checkpoint, args.case, args.out, layer=args.layer, classes=args.classes,
                       method=args.method, roi_size=args.roi_size, full=args.full)
    for n in res.notes:
        print(f"note: {n}")
    print(f"{res.method} of layer {res.layer!r} for {', '.join(res.class_names)} "
          f"on input {list(res.input_shape)}")
    for p in res.paths:
        print(f"wrote {p}")
    return 0
