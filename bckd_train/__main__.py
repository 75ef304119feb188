"""python -m bckd_train {data,train,eval} ..."""

import argparse
import json
import os
import sys

from . import data


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bckd_train")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="prepare the forest and fashion data sets (COCO) in the cache folder")
    p.add_argument("--cache", default=None, help="cache folder (default: $BCKD_CACHE or .cache)")
    p = sub.add_parser("train", help="train a preset")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth")
    p.add_argument("--cache", default=None)
    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on its data set's val split")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--cache", default=None)
    args = parser.parse_args(argv)

    try:
        if args.command == "data":
            for name, folder in data.prepare(args.cache).items():
                print(f"{name}: {folder}")
            return 0
        from . import engine
        from .config import get_config

        if args.command == "train":
            metrics = engine.train(get_config(args.config), args.out, resume=args.resume, cache=args.cache)
            print(json.dumps(metrics, indent=2))
            return 0
        import torch

        from .model import GFL

        ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        cfg = get_config(ckpt["config"])
        model = GFL(cfg.model, cache=args.cache)
        model.load_state_dict(ckpt["model"])
        _, val = engine.datasets(cfg, args.cache)
        metrics = engine.evaluate(model, val)
        out = os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "eval.json")
        with open(out, "w") as f:
            json.dump(metrics, f, indent=2)
        print(json.dumps(metrics, indent=2))
        return 0
    except data.MissingSource as exc:
        print(f"bckd_train: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
