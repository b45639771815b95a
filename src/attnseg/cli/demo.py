"""``attnseg demo``: the main job end to end on the built-in phantom data."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="make phantom data, train PANet, predict, evaluate, report",
                       description="Make the built-in 2 mm (realistic) phantom BraTS data, train a CPU-sized Prior "
                                   "Attention Network, predict the held-out cases with a Gaussian sliding "
                                   "window, evaluate ET/TC/WT Dice and HD95 and write the HTML report.")
    p.add_argument("--out", default="demo_output", help="output folder (data, run, predictions, report)")
    p.add_argument("--seed", type=int, default=0, help="training seed (the data are always made with seed 0)")
    p.add_argument("--train-cases", type=int, default=24, help="phantom cases for training + validation")
    p.add_argument("--test-cases", type=int, default=20, help="held-out phantom test cases")
    p.add_argument("--difficulty", choices=("realistic", "easy"), default="realistic",
                   help="phantom generator (default realistic; see docs/data.md)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo (training, predictions)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnseg.experiments.demo import run_demo
    from attnseg.report.table import print_table

    res = run_demo(args.out, seed=args.seed, train_cases=args.train_cases, test_cases=args.test_cases,
                   resume=args.resume, overrides=args.overrides, tta=args.tta, report=not args.no_report,
                   difficulty=args.difficulty)
    rows = []
    for region, stats in res.summary.items():
        rows.append({"region": region, "Dice mean": stats.get("dice", {}).get("mean"),
                     "Dice median": stats.get("dice", {}).get("median"),
                     "HD95 mean": stats.get("hd95", {}).get("mean")})
    print_table(rows, ["region", "Dice mean", "Dice median", "HD95 mean"],
                title=f"attnseg demo: held-out phantom cases (seed {args.seed})")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
    print(f"time: {timing}")
    print(f"run folder:  {res.run_dir}")
    print(f"predictions: {res.pred_dir}")
    print(f"evaluation:  {res.eval_dir}")
    if res.report:
        print(f"report:      {res.report}")
    return 0
