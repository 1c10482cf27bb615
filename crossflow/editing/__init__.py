"""Moving through CrossFlow's text-latent space: interpolation, arithmetic, inversion, SDE sampling and editing.

Library functions over a :class:`~crossflow.inference.CrossFlowPipeline` (or a bare velocity callable), no
Lightning. The modules: ``latent_ops`` (VE posteriors, interpolation, arithmetic), ``sde`` (the stochastic
sampler whose noise is the VE's own, ODE inversion, cycle-consistent encoding, SDEdit), ``drag`` (moving a patch),
``attention`` (FluxSpace-style edits of the flow's attention outputs, and the hook that reads or changes them).
"""
