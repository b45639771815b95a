"""``attnseg evaluate``: score predicted label maps against references."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="Dice, HD95, ASSD, ... of predictions vs references (BraTS rules)",
        description="Match PRED/<case>.nii.gz with the reference label maps by case id (REF may be a BraTS "
                    "dataset folder or a flat folder of label files) and write OUT/per_case.csv, "
                    "OUT/summary.json (mean, std, median, quartiles) and OUT/summary.md. See docs/metrics.md "
                    "for the exact definitions.")
    p.add_argument("--pred", required=True, help="folder of predicted label maps")
    p.add_argument("--ref", required=True, help="reference folder (BraTS dataset or flat label files)")
    p.add_argument("--out", default=None, help="output folder (default: PRED/../evaluation)")
    p.add_argument("--regions", choices=["brats", "labels"], default="brats",
                   help="brats: ET/TC/WT regions; labels: every label value one-vs-rest")
    p.add_argument("--labels", type=int, nargs="+", default=None, help="label values to score (--regions labels)")
    p.add_argument("--spacing-aware", action="store_true", help="distances in mm (voxel sizes from the affine)")
    p.add_argument("--hd-method", choices=["monai", "medpy"], default="monai",
                   help="HD95/ASSD definition (default monai: max of the directed 95th percentiles)")
    p.add_argument("--empty", choices=["brats", "nan"], default="brats",
                   help="brats: legacy BraTS values for empty regions (Dice 1/0, HD95 0/373.13); nan: undefined")
    p.add_argument("--lesion-wise", action="store_true", help="add BraTS 2023 lesion-wise Dice and HD95")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--strict", action="store_true", help="a prediction without a reference is an error")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnseg.metrics.evaluate import evaluate_folders, summarize, write_outputs
    from attnseg.report.table import print_table

    rows, info = evaluate_folders(args.pred, args.ref, regions=args.regions, labels=args.labels,
                                  spacing_aware=args.spacing_aware, hd_method=args.hd_method, empty=args.empty,
                                  lesion_wise=args.lesion_wise, workers=args.workers, strict=args.strict)
    summary = summarize(rows)
    out = Path(args.out) if args.out else Path(args.pred).resolve().parent / "evaluation"
    paths = write_outputs(rows, summary, info, out)
    units = info["distance_units"]
    table = [{"region": reg, "n": s["dice"]["n"], "dice": round(s["dice"]["mean"], 4),
              "dice_median": round(s["dice"]["median"], 4), f"hd95_{units}": round(s["hd95"]["mean"], 3),
              f"assd_{units}": round(s["assd"]["mean"], 3), "sensitivity": round(s["sensitivity"]["mean"], 4)}
             for reg, s in summary.items()]
    print_table(table, list(table[0]), title=f"attnseg evaluate: {info['cases']} case(s)")
    for key in ("predictions_without_reference", "references_without_prediction"):
        if info[key]:
            print(f"note: {len(info[key])} {key.replace('_', ' ')}: {', '.join(info[key][:10])}")
    print(f"wrote {paths['per_case']}, {paths['summary_json']}, {paths['summary_md']}")
    return 0
