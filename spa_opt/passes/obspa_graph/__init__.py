"""The graph side of ``obspa``: consumer layers in an onnx_ir graph, their activations.

The numeric kernels (Hessian accumulators, structured OBS, ordering, threads) are the
graph-free library :mod:`spa_opt.obs`; this package is what ties them to a model:

- :mod:`.layers`: which nodes consume a group's channels through a weight, as ``Y = W X``,
  and how each reads its activation (a :class:`spa_opt.obs.hessian.Geometry`);
- :mod:`.propagate`: activations of calibration inputs from onnxruntime, fed to the
  accumulators;
- :mod:`.analytic`: Hessians from BatchNormalization statistics read from the graph.
"""
