"""The store of trained checkpoints: baselines, pruned models and distilled students.

A checkpoint is keyed by model name, recipe name and seed. :func:`stored` looks for it among
the files shipped with the package (``nncompress/baselines/``), then in the cache directory
(``$NNCOMPRESS_CACHE`` or the user cache directory), and otherwise makes it deterministically
and caches it. A stored checkpoint records the recipe it was made with; one whose recipe differs
from the current recipe is stale and never used. Checkpoints are read with
``torch.load(weights_only=True)``.

- Machinery (:mod:`~nncompress.store.core`): :func:`cache_dir`, :func:`checkpoint_filename`,
  :func:`checkpoint_record`, :func:`write_checkpoint`, :func:`stored`, :func:`load_model`,
  :func:`lookup`.
- Baselines (:mod:`~nncompress.store.baselines`): :data:`RECIPES`, :func:`train_baseline`,
  :func:`baseline_info`, :func:`baseline`.
- Pruned models (:mod:`~nncompress.store.pruned`): :data:`PRUNED` (:class:`PruneRecipe`),
  :func:`make_pruned`, :func:`pruned_info`, :func:`pruned_baseline`.
- Distilled students (:mod:`~nncompress.store.students`): :data:`DISTILLED`
  (:class:`DistillRecipe` of :class:`DistillStage`), :func:`make_distilled`,
  :func:`distilled_info`, :func:`distilled`; :func:`training_recipe` and :func:`describe_targets`
  read what any stored checkpoint was trained with.

The shipped checkpoints are produced by the package's script::

    python -m nncompress.baselines lenet300_100 lenet5 hinton_teacher hinton_student
    python -m nncompress.baselines hinton_teacher --recipe paper
    python -m nncompress.baselines hinton_student --recipe jitter
    python -m nncompress.baselines --pruned han lenet300_100 lenet5
    python -m nncompress.baselines --pruned deep lenet5
    python -m nncompress.baselines lenet5_thin --distilled scratch kd attention1 hint_kd --seed 0 1 2
    python -m nncompress.baselines lenet5_thin --distilled attention5 attention20
    python -m nncompress.baselines hinton_tiny --distilled scratch kd_t1 kd_t2 kd_t4 kd_t8 kd_t20 --seed 0 1 2
    python -m nncompress.baselines hinton_student --distilled kd_t20 kd_t20_jitter kd_t20_alpha05_jitter
"""

from .baselines import RECIPES, baseline, baseline_info, train_baseline
from .core import (ADDED_RECIPE_FIELDS, CACHE_ENV, SHIPPED_DIR, cache_dir, checkpoint_filename, checkpoint_record,
                   load_model, lookup, read_checkpoint, stored, write_checkpoint)
from .students import (DISTILLED, TERMS, DistillRecipe, DistillStage, describe_targets, distilled, distilled_filename,
                        distilled_info, make_distilled, training_recipe)
from .pruned import PRUNED, PruneRecipe, make_pruned, pruned_baseline, pruned_filename, pruned_info

__all__ = [
    "CACHE_ENV", "SHIPPED_DIR", "cache_dir", "checkpoint_filename", "checkpoint_record", "write_checkpoint", "read_checkpoint",
    "ADDED_RECIPE_FIELDS", "stored",
    "load_model", "lookup", "RECIPES", "train_baseline", "baseline_info", "baseline",
    "PruneRecipe", "PRUNED", "make_pruned", "pruned_filename", "pruned_info", "pruned_baseline",
    "TERMS", "DistillStage", "DistillRecipe", "DISTILLED", "make_distilled", "distilled_filename", "distilled_info",
    "distilled", "training_recipe", "describe_targets",
]
