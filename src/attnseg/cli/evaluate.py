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
    p.add_argument("--out", default=None,
                   help="output folder (default: PRED_evaluation next to PRED; an evaluation of other folders "
                        "there is never overwritten)")
    p.add_argument("--regions", choices=["auto", "brats", "labels"], default="auto",
                   help="brats: ET/TC/WT regions; labels: every label value one-vs-rest, named after dataset.json; "
                        "auto (default): brats for BraTS data, labels otherwise")
    p.add_argument("--labels", type=int, nargs="+", default=None, help="label values to score (--regions labels)")
    p.add_argument("--spacing-aware", action="store_true", help="distances in mm (voxel sizes from the affine)")
    p.add_argument("--hd-method", choices=["monai", "pooled", "deepmind"], default="monai",
                   help="HD95/ASSD definition: monai (max of the directed 95th percentiles; default), pooled "
                        "(95th percentile of both sets together: MedPy, panoptica), deepmind (area-weighted "
                        "surface elements: the BraTS 2023 script; needs attnseg[brats2023])")
    p.add_argument("--empty", choices=["brats", "nan"], default="brats",
                   help="brats: legacy BraTS values for empty regions (Dice 1/0, HD95 0/373.13); nan: undefined")
    p.add_argument("--lesion-wise", action="store_true",
                   help="add the BraTS 2023 script's lesion-wise Dice/HD95, Num_TP/FP/FN and legacy columns "
                        "(exactly as the official script; needs attnseg[brats2023]) and OUT/lesions.csv")
    p.add_argument("--challenge", choices=["GLI", "SSA", "MEN", "PED", "MET"], default=None,
                   help="BraTS sub-challenge: lesion-wise parameters (dilation / mm³ threshold: GLI, SSA, PED 3/50; "
                        "MEN 1/50; MET 1/2; implies --lesion-wise) and, with --protocol brats2024, the "
                        "default config of the official package")
    p.add_argument("--protocol", choices=["attnseg", "brats2024"], default="attnseg",
                   help="brats2024: score with the official BraTS 2024+ package (brats-evaluation, panoptica; "
                        "needs attnseg[brats]) and write its per-case CSV")
    p.add_argument("--brats-config", default=None,
                   help="--protocol brats2024: bundled config name (gli, ped, mets, MenRT, MenPre, GoAT) or a "
                        "YAML path (default from --challenge: GLI/SSA gli, PED ped, MET mets, MEN MenPre)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--strict", action="store_true", help="a prediction without a reference is an error")
    p.set_defaults(func=run)


def _check_out(out, pred, ref) -> None:
    """Refuse to overwrite the evaluation of other prediction/reference folders."""
    import json

    f = out / "summary.json"
    if not f.is_file():
        return
    try:
        info = json.loads(f.read_text()).get("info") or {}
    except (ValueError, OSError, AttributeError):
        return
    old = (info.get("pred"), info.get("ref"))
    if old[0] is not None and old != (str(pred), str(ref)):
        raise ValueError(f"{out}: holds the evaluation of {old[0]} against {old[1]}; pass another --out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnseg.metrics.evaluate import evaluate_folders, summarize, write_outputs
    from attnseg.report.table import print_table

    pred = Path(args.pred).resolve()
    out = Path(args.out) if args.out else pred.parent / f"{pred.name}_evaluation"
    _check_out(out, pred, Path(args.ref).resolve())
    if args.protocol == "brats2024":
        from attnseg.metrics.evaluate import evaluate_brats2024

        res = evaluate_brats2024(args.pred, args.ref, out, config=args.brats_config, challenge=args.challenge or "GLI",
                                 strict=args.strict)
        print(f"BraTS 2024+ protocol (brats-evaluation, config {res['config']}): {res['cases']} case(s)")
        for key, val in res["means"].items():
            print(f"  {key}: {val:.4f}")
        print(f"wrote {res['json']}, {res['csv']}")
        return 0
    lesion_wise = args.lesion_wise or args.challenge is not None
    # the BraTS lesion-wise scores are defined on the ET/TC/WT regions
    regions = "brats" if lesion_wise and args.regions == "auto" else args.regions
    rows, info = evaluate_folders(args.pred, args.ref, regions=regions, labels=args.labels,
                                  spacing_aware=args.spacing_aware, hd_method=args.hd_method, empty=args.empty,
                                  lesion_wise=lesion_wise,
                                  challenge=args.challenge or "GLI", workers=args.workers, strict=args.strict)
    summary = summarize(rows)
    paths = write_outputs(rows, summary, info, out)
    units = info["distance_units"]
    table = [{"region": reg, "n": s["dice"]["n"], "dice": round(s["dice"]["mean"], 4),
              "dice_median": round(s["dice"]["median"], 4), f"hd95_{units}": round(s["hd95"]["mean"], 3),
              f"assd_{units}": round(s["assd"]["mean"], 3), "sensitivity": round(s["sensitivity"]["mean"], 4)}
             for reg, s in summary.items()]
    if lesion_wise:  # the BraTS 2023 script's lesion-wise means (HD95 in mm)
        for row, s in zip(table, summary.values()):
            row.update(lesion_dice=round(s["lesion_dice"]["mean"], 4),
                       lesion_hd95_mm=round(s["lesion_hd95"]["mean"], 3))
    print_table(table, list(table[0]), title=f"attnseg evaluate: {info['cases']} case(s)")
    for key in ("predictions_without_reference", "references_without_prediction"):
        if info[key]:
            print(f"note: {len(info[key])} {key.replace('_', ' ')}: {', '.join(info[key][:10])}")
    print(f"wrote {paths['per_case']}, {paths['summary_json']}, {paths['summary_md']}"
          + (f", {paths['lesions']}" if "lesions" in paths else ""))
    return 0
