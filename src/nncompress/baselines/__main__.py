"""Train baselines and write their checkpoints: ``python -m nncompress.baselines lenet300_100 lenet5``.

With ``--pruned han`` it writes pruned checkpoints instead (:func:`nncompress.store.make_pruned`,
starting from the stored baselines): ``python -m nncompress.baselines --pruned han lenet300_100 lenet5``.
With ``--distilled RECIPE ...`` it writes distilled students (:func:`nncompress.store.make_distilled`),
one per recipe and seed: ``python -m nncompress.baselines lenet5_thin --distilled kd hint_kd --seed 0 1 2``
(the models come first, since ``--distilled`` and ``--seed`` take several values).
The distilled sentence encoder of the transformer chapter (:func:`nncompress.text.make_student`,
about half an hour on two cores): ``python -m nncompress.baselines minilm_l3``. The character-level
GPT of the generative chapter and its draft model (:func:`nncompress.text.make_gpt`):
``python -m nncompress.baselines shakespeare_gpt``, then ``shakespeare_draft``, ``shakespeare_1layer`` and
``shakespeare_sparse80``.

This is the script that produced the checkpoints shipped in this folder; the test suite retrains
a baseline, a pruned model and a distilled student with the same functions and checks that the
test error agrees with the shipped checkpoint's.
"""

import argparse
from pathlib import Path

from nncompress import models, store, text
from nncompress.data import load_mnist
from nncompress.store import SHIPPED_DIR, checkpoint_filename, train_baseline, write_checkpoint


def _jobs(args, data):
    """(path, make) for every checkpoint the arguments ask for."""
    for name in args.models:
        for seed in args.seed:
            if args.distilled:
                for recipe in args.distilled:
                    yield (args.out / store.distilled_filename(name, recipe, seed),
                           lambda n=name, r=recipe, s=seed: store.make_distilled(n, r, s, data=data))
            elif args.pruned:
                yield (args.out / store.pruned_filename(name, args.pruned, seed),
                       lambda n=name, s=seed: store.make_pruned(n, args.pruned, s, data=data))
            else:
                yield (args.out / checkpoint_filename(name, args.recipe, seed),
                       lambda n=name, s=seed: train_baseline(n, args.recipe, s, data=data, progress=True))


def _students(args) -> None:
    """Distill the sentence-encoder students named in ``args.models``."""
    for name in args.models:
        for seed in args.seed:
            path = args.out / text.student_filename(name, seed)
            checkpoint = text.make_student(name, seed, progress=True)
            write_checkpoint(checkpoint, path)
            print(f"{path}: dev Spearman {checkpoint['dev_spearman']:.2f}, test {checkpoint['test_spearman']:.2f}, "
                  f"{checkpoint['train_seconds']:.0f} s, {path.stat().st_size / 1e6:.2f} MB")


def _gpts(args) -> None:
    """Train the character-level GPTs named in ``args.models``."""
    for name in args.models:
        for seed in args.seed:
            path = args.out / text.gpt_filename(name, seed)
            checkpoint = text.make_gpt(name, seed, progress=True)
            write_checkpoint(checkpoint, path)
            print(f"{path}: validation loss {checkpoint['val_loss']:.4f} nats/char, "
                  f"{checkpoint['train_seconds']:.0f} s, {path.stat().st_size / 1e6:.2f} MB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nncompress.baselines", description=__doc__)
    parser.add_argument("models", nargs="+", choices=sorted(models.MODELS) + sorted(text.STUDENTS) + sorted(text.GPTS))
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one checkpoint per seed (default: 0)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--pruned", metavar="RECIPE", choices=sorted({r for v in store.PRUNED.values() for r in v}),
                      help="write the pruned checkpoint made with this pruning recipe instead")
    kind.add_argument("--distilled", metavar="RECIPE", nargs="+",
                      choices=sorted({r for v in store.DISTILLED.values() for r in v}),
                      help="write the distilled students made with these distillation recipes instead")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    for registry, make, kind in ((text.STUDENTS, _students, "a sentence-encoder student"),
                                 (text.GPTS, _gpts, "a character-level GPT")):
        chosen = [name for name in args.models if name in registry]
        if chosen:
            if len(chosen) != len(args.models) or args.pruned or args.distilled:
                parser.error(f"{kind} is made on its own, without other models, --pruned or --distilled")
            return make(args)
    data = load_mnist()
    for path, make in _jobs(args, data):
        checkpoint = make()
        write_checkpoint(checkpoint, path)
        print(f"{path}: test error {100 * checkpoint['test_error']:.2f} %, val error "
              f"{100 * checkpoint['val_error']:.2f} %, {checkpoint['train_seconds']:.0f} s, "
              f"{path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
