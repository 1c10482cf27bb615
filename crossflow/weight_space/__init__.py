"""The weight space of instance fine-tunes (after weights2weights, Dravid et al. 2024, arXiv 2406.09413).

Many small LoRA fine-tunes of the flow transformer's attention q/v — one per *instance*, an object identity of the
shapes data bound to a rare token (crossflow.data.shapes.Instance) — trained together in one run, then treated as
points of one space: standardised, reduced by PCA, sampled, edited along attribute directions, and fitted to a single
image. Modules:

- ``bank``: the banked LoRA layer (all K instances' factors in one layer, per-sample routing, a dense-ΔW mode) and
  the text-latent offset bank used for comparison; bank files.
- ``objective``: the instance flow-matching loss (CrossFlow's, under one fixed prompt, VE frozen).
- ``training``: the one Lightning run that trains a whole bank (the only module here that imports Lightning).
- ``space``: :class:`~crossflow.weight_space.space.WeightSpace` — standardise, PCA, encode / decode, sample,
  attribute directions, edits, files.
- ``generate``: sampling an instance model, with delayed injection of an edit.
- ``inversion``: one image -> PC coefficients.

CLI: ``crossflow edit w2w-train | w2w-pca | w2w-sample | w2w-edit | w2w-invert`` (crossflow/editing/cli.py). The
study: bench/weight_space.py; the page: docs/weight_space.md.
"""
