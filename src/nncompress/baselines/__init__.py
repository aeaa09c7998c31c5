"""Trained baseline checkpoints shipped with the package (see :mod:`nncompress.store`).

Run ``python -m nncompress.baselines MODEL [MODEL ...]`` to regenerate them.
"""
