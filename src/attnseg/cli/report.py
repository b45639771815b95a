"""``attnseg report``: HTML + Markdown report of a finished run (curves, metrics, box plots, overlays)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="HTML/Markdown report of a run: curves, metric table, box plots, case overlays",
        description="Write RUN_DIR/report/index.html (figures as PNG files next to it), report.md and "
                    "report_standalone.html (images embedded) for a run folder of `attnseg train`, using the "
                    "output of `attnseg evaluate` for the metric table, box plots and the overlays of the best, "
                    "median and worst cases.")
    p.add_argument("run_dir", help="run folder written by `attnseg train`")
    p.add_argument("--eval", dest="eval_dir", default=None,
                   help="output folder of `attnseg evaluate` (default: RUN_DIR/eval if it exists)")
    p.add_argument("--pred", dest="pred_dir", default=None,
                   help="predictions folder of `attnseg predict` (default: RUN_DIR/predictions, or the one "
                        "recorded by evaluate)")
    p.add_argument("--data", dest="data_dir", default=None,
                   help="dataset with the images and ground truth, for the overlays (default: the reference "
                        "folder recorded by evaluate, else data.root of the run's config)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--no-standalone", action="store_true", help="do not write report_standalone.html")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnseg.report.html import build_report

    res = build_report(args.run_dir, eval_dir=args.eval_dir, pred_dir=args.pred_dir, data_dir=args.data_dir,
                       out_dir=args.out, standalone=not args.no_standalone, title=args.title)
    for n in res.notes:
        print(f"note: {n}")
    print(f"report:     {res.html}")
    print(f"markdown:   {res.markdown}")
    if res.standalone is not None:
        print(f"standalone: {res.standalone} (images embedded)")
    print(f"figures:    {len(res.figures)} PNG files in {res.out_dir}")
    return 0
