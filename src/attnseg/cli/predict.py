"""``attnseg predict``: segment cases with a trained (or reference) checkpoint."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="segment images with a checkpoint (sliding window, optional mirroring TTA)",
        description="Segment one image file or every case of a dataset folder. Writes OUTPUT/<case>.nii.gz in "
                    "the input's geometry (affine, header, shape) and label convention (BraTS 0/1/2/4 or "
                    "0/1/2/3, class indices otherwise). Never writes into the input folder. A failing case is "
                    "reported and skipped; the exit status is 1 if any case failed.")
    p.add_argument("--checkpoint", "-c", required=True, help="attnseg checkpoint, or a PANet/AMIS reference one")
    p.add_argument("--input", "-i", required=True, help="image file (3-D, or 4-D with channels last) or dataset folder")
    p.add_argument("--output", "-o", required=True, help="output folder (created; must not be inside the input)")
    p.add_argument("--arch", default=None, help="architecture of a reference checkpoint (e.g. panet, unet, unet3d)")
    p.add_argument("--source", default=None, choices=["panet-reference", "amis-reference"],
                   help="force the reference converter (default: detected)")
    p.add_argument("--layout", default="auto",
                   help="dataset layout of --input: auto, brats, nnunet, msd, malc, hvsmr, folder (manifest), "
                        "images (a plain folder of image files)")
    p.add_argument("--subset", default="test", choices=["test", "train", "all"],
                   help="part of an nnU-Net/MSD dataset to segment: test = imagesTs (default), train = imagesTr")
    p.add_argument("--channels", nargs="+", default=None,
                   help="channel (modality) order, e.g. t1 t1ce t2 flair (default: from the checkpoint)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation over all spatial axes")
    p.add_argument("--save-probs", action="store_true", help="also write <case>_probs.nii.gz (channels last)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="network precision")
    p.add_argument("--roi", type=int, nargs="+", default=None, help="window size (default: checkpoint patch size)")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction (default 0.5)")
    p.add_argument("--sw-batch", type=int, default=1, help="windows per network call")
    p.add_argument("--blend", choices=["gaussian", "constant"], default="gaussian")
    p.add_argument("--slice-axis", default=None, choices=["axial", "coronal", "sagittal", "all"],
                   help="2-D models: slice direction (default: the checkpoint's; all = average of the three "
                        "orthogonal predictions)")
    p.add_argument("--slice-batch", type=int, default=16, help="2-D models: slices per network call")
    p.add_argument("--resume", action="store_true", help="skip cases whose output already exists")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this Python module first (it may register the checkpoint's model); a "
                        "checkpoint's own model.imports are never imported (repeatable)")
    p.add_argument("--labels", default=None, choices=["brats2020", "brats2023", "plain"],
                   help="label convention of the output (default: the input's)")
    pp = p.add_argument_group("post-processing (defaults: the checkpoint's, else off)")
    pp.add_argument("--min-component", type=int, default=None, help="remove components under N voxels (ref.: 10)")
    pp.add_argument("--connectivity", type=int, default=None, help="1 faces (ref.), 2, 3 full neighbourhood")
    pp.add_argument("--et-threshold", type=int, default=None, help="ET under N voxels becomes NCR/NET (ref.: 300)")
    pp.add_argument("--et-per-component", action="store_true", help="apply the ET rule per ET component")
    pp.add_argument("--largest-component", action="store_true", help="keep the largest component of each class")
    pp.add_argument("--reference-postprocess", action="store_true",
                    help="PANet reference rules: components < 10 voxels, ET < 300 voxels")
    p.add_argument("--no-fastpath", action="store_true", help="disable the CPU fast paths")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (inductor, freezing): compiled once per window shape, "
                        "the first call's cost is printed (3-D models); on CPU often slower than the default fast "
                        "path: measure (docs/inference.md)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc malloc as is: lower peak memory, more kernel time (CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnseg.infer.postprocess import PostprocessConfig
    from attnseg.infer.predict import check_output_dir, load_predictor, predict_cases

    check_output_dir(Path(args.output), [Path(args.input)])  # fail before loading anything
    import importlib

    for module in args.imports:  # only modules named on the command line, never the checkpoint's
        importlib.import_module(module)
    roi = None if args.roi is None else (args.roi[0] if len(args.roi) == 1 else tuple(args.roi))
    predictor = load_predictor(args.checkpoint, arch=args.arch, source=args.source, device=args.device,
                               roi_size=roi, overlap=args.overlap, sw_batch_size=args.sw_batch, tta=args.tta,
                               precision=args.precision, blend=args.blend, fastpath=not args.no_fastpath,
                               malloc_tuning=not args.no_malloc_tuning, slice_axis=args.slice_axis,
                               slice_batch=args.slice_batch, compile=args.compile)
    pp = predictor.postprocess
    if args.reference_postprocess:
        pp = PostprocessConfig.reference()
        pp.kind = predictor.postprocess.kind
    for name, val in (("min_component_voxels", args.min_component), ("connectivity", args.connectivity),
                      ("et_threshold", args.et_threshold)):
        if val is not None:
            setattr(pp, name, val)
    if args.et_per_component:
        pp.et_per_component = True
    if args.largest_component:
        pp.largest_component = True
    if pp.kind == "classes" and pp.et_threshold and pp.et_class is None:
        pp.et_class = 3  # BraTS classes (bg, NCR/NET, ED, ET)
    predictor.postprocess = pp
    results = predict_cases(predictor, args.input, args.output, layout=args.layout, channels=args.channels,
                            subset=args.subset,
                            save_probs=args.save_probs, resume=args.resume, label_convention=args.labels)
    failed = [r for r in results if r.status == "failed"]
    done = sum(r.status == "ok" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    print(f"predicted {done} case(s), skipped {skipped}, failed {len(failed)} -> {args.output}")
    for r in failed:
        print(f"  failed: {r.case_id}: {r.error}")
    return 1 if failed else 0
