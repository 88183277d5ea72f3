"""Command line: argument parsing only. Each command hands its arguments to one API or
pipeline function; no traceback reaches the user (known failures print one line and exit 2).
"""
from __future__ import annotations

import argparse
import logging
import sys

from birdsep.audio import AudioError


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


# --------------------------------------------------------------------------- separation


def _add_train_separator(sub) -> None:
    p = sub.add_parser("train-separator", help="train a MixIT separator on unlabelled recordings")
    p.add_argument("data", nargs="+", help="audio files or folders (recursive)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, final model)")
    p.add_argument("--preset", default="small", help="model size: small | paper (default small)")
    p.add_argument("--sources", type=int, default=None, help="number of output sources M (default: the preset's)")
    p.add_argument("--steps", type=int, default=10000, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, default=4, help="mixtures of mixtures per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip-seconds", type=float, default=None, help="mixture length (default: the preset's)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip files matching this glob (repeatable)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="carry on from RUN_DIR's last checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="data loading processes")
    p.add_argument("--precision", default="32-true", help="Lightning precision, e.g. 32-true, bf16-mixed")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: cpu | gpu | auto")
    p.add_argument("--devices", default="auto", help="Lightning devices (count or list)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")

    def run(a):
        from birdsep.separation.train import TrainOptions, train_separator

        opts = TrainOptions(
            out=a.out, preset=a.preset, sources=a.sources, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
            clip_seconds=a.clip_seconds, exclude=tuple(a.exclude), checkpoint_every=a.checkpoint_every,
            resume=a.resume, seed=a.seed, workers=a.workers, precision=a.precision, accelerator=a.accelerator,
            devices=a.devices, strategy=a.strategy, num_nodes=a.num_nodes, threads=a.threads,
        )
        train_separator(a.data, opts)
        return 0

    p.set_defaults(func=run)


def _add_eval_separator(sub) -> None:
    p = sub.add_parser("eval-separator", help="MoMi of a separator on held-out mixtures of mixtures")
    p.add_argument("data", nargs="+", help="held-out audio files or folders")
    p.add_argument("--model", default=None, help="run directory or model folder (default: the shipped model)")
    p.add_argument("--mixtures", type=int, default=100, help="number of mixtures of mixtures")
    p.add_argument("--clip-seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--threads", type=int, default=None)

    def run(a):
        from birdsep.separation.evaluate import evaluate_separator

        report = evaluate_separator(a.data, model=a.model, mixtures=a.mixtures, clip_seconds=a.clip_seconds,
                                    seed=a.seed, json_path=a.json, threads=a.threads)
        print(report.table())
        return 0

    p.set_defaults(func=run)


COMMANDS = [_add_train_separator, _add_eval_separator]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birdsep", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (AudioError, UsageError) as exc:
        print(f"birdsep {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"birdsep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
