"""``attnseg data``: phantom datasets and dataset checks.

* ``attnseg data synth-brats --out DIR --cases N --spacing {1,2} --seed S [--difficulty easy|realistic]``
* ``attnseg data synth-tissue --out DIR --cases N --spacing {1,2} --seed S``
* ``attnseg data check DIR [--layout L]`` – validate every case, print a table, exit 1 on problems.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make phantom datasets, check datasets",
                       description="Built-in phantom datasets and dataset validation.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    sb = dsub.add_parser("synth-brats", help="write BraTS-2020-layout brain-tumour phantoms",
                         description="Brain-tumour phantoms from the MNI ICBM152 2009 template shipped with "
                                     "nilearn: <out>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, labels 0/1/2/4, "
                                     "240x240x155 at 1 mm or 120x120x78 at 2 mm.")
    sb.add_argument("--out", required=True, help="output folder")
    sb.add_argument("--cases", type=int, default=30, help="number of cases (default 30)")
    sb.add_argument("--spacing", type=int, choices=(1, 2), default=2, help="voxel size in mm (default 2)")
    sb.add_argument("--seed", type=int, default=0)
    sb.add_argument("--start", type=int, default=0,
                    help="index of the first case (case N is numbered N+1): held-out sets continue a training set")
    sb.add_argument("--difficulty", choices=("easy", "realistic"), default="easy",
                    help="easy (default): clean, well-separated lesions; realistic: scanner sites, fading "
                         "oedema, thin/broken rims, satellites, thick slices, misregistration, imperfect skull "
                         "stripping, ghosting (docs/data.md)")
    sb.set_defaults(func=run_synth_brats)

    st = dsub.add_parser("synth-tissue", help="write brain-tissue phantoms (bg/CSF/GM/WM)",
                         description="T1 phantoms with labels 0 background, 1 CSF, 2 grey matter, 3 white matter: "
                                     "<out>/images/<case>.nii.gz and <out>/masks/<case>.nii.gz.")
    st.add_argument("--out", required=True)
    st.add_argument("--cases", type=int, default=10)
    st.add_argument("--spacing", type=int, choices=(1, 2), default=2)
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=run_synth_tissue)

    ck = dsub.add_parser("check", help="validate a dataset and print a table of its cases",
                         description="Find the cases (layout auto-detected unless given), read every file and "
                                     "check modalities, labels, shapes, affines, NaN/inf and label values. "
                                     "Exit status 1 when any problem is found.")
    ck.add_argument("root", help="dataset folder (or manifest file)")
    ck.add_argument("--layout", default="auto", choices=("auto", "brats", "nnunet", "malc", "hvsmr", "folder"))
    ck.add_argument("--channels", nargs="+", default=None, help="channel order (e.g. t1 t1ce t2 flair)")
    ck.add_argument("--no-labels", action="store_true", help="labels are optional (e.g. validation data)")
    ck.add_argument("--headers-only", action="store_true", help="check shapes/affines only (fast)")
    ck.set_defaults(func=run_check)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_synth_brats(args: argparse.Namespace) -> int:
    import time

    from attnseg.data.synth import make_synth_brats

    t = time.perf_counter()
    paths = make_synth_brats(args.out, cases=args.cases, spacing=args.spacing, seed=args.seed,
                             difficulty=args.difficulty, start=args.start)
    print(f"wrote {len(paths)} {args.difficulty} BraTS-layout phantom cases ({args.spacing} mm) to {args.out} "
          f"in {time.perf_counter() - t:.1f} s")
    return 0


def run_synth_tissue(args: argparse.Namespace) -> int:
    import time

    from attnseg.data.synth import make_synth_tissue

    t = time.perf_counter()
    paths = make_synth_tissue(args.out, cases=args.cases, spacing=args.spacing, seed=args.seed)
    print(f"wrote {len(paths)} tissue phantom cases ({args.spacing} mm) to {args.out} "
          f"in {time.perf_counter() - t:.1f} s")
    return 0


def run_check(args: argparse.Namespace) -> int:
    import sys

    from attnseg.data.readers import find_cases, validate_cases
    from attnseg.report.table import print_table

    cases = find_cases(args.root, args.layout, channels=args.channels, require_labels=not args.no_labels)
    rows = validate_cases(cases, full=not args.headers_only)
    cols = ["case_id", "layout", "convention", "channels", "shape", "spacing", "labels"]
    print_table(rows, cols, title=f"{args.root}: {len(rows)} case(s)")
    bad = [r for r in rows if r["error"]]
    for r in bad:
        print(f"error: {r['error']}", file=sys.stderr)
    print(f"{len(rows) - len(bad)}/{len(rows)} case(s) OK" + (f", {len(bad)} with problems" if bad else ""))
    return 1 if bad else 0
