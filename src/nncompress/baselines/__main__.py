"""Train baselines and write their checkpoints: ``python -m nncompress.baselines lenet300_100 lenet5``.

With ``--pruned han`` it writes pruned checkpoints instead (:func:`nncompress.store.make_pruned`,
starting from the stored baselines): ``python -m nncompress.baselines --pruned han lenet300_100 lenet5``.

This is the script that produced the checkpoints shipped in this folder; the test suite retrains
the baselines with the same function and checks that the test error agrees within 0.1 point.
"""

import argparse
from pathlib import Path

from nncompress import models, store
from nncompress.data import load_mnist
from nncompress.store import SHIPPED_DIR, checkpoint_filename, train_baseline, write_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nncompress.baselines", description=__doc__)
    parser.add_argument("models", nargs="+", choices=sorted(models.MODELS))
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pruned", metavar="RECIPE", choices=sorted({r for v in store.PRUNED.values() for r in v}),
                        help="write the pruned checkpoint made with this pruning recipe instead")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    data = load_mnist()
    for name in args.models:
        if args.pruned:
            checkpoint = store.make_pruned(name, args.pruned, args.seed, data=data)
            path = args.out / store.pruned_filename(name, args.pruned, args.seed)
        else:
            checkpoint = train_baseline(name, args.recipe, args.seed, data=data, progress=True)
            path = args.out / checkpoint_filename(name, args.recipe, args.seed)
        write_checkpoint(checkpoint, path)
        print(f"{path}: test error {100 * checkpoint['test_error']:.2f} %, val error "
              f"{100 * checkpoint['val_error']:.2f} %, {checkpoint['train_seconds']:.0f} s, "
              f"{path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
