"""The machinery of ``obspa``: consumer layers, Hessians, structured OBS, ordering.

- :mod:`.linalg`: the OBS maths on one layer (costs, removal with downdate, the
  least-squares reconstruction), numpy and scipy only;
- :mod:`.layers`: which nodes consume a group's channels through a weight, as ``Y = W X``;
- :mod:`.hessian`: ``H = 2 X Xᵀ / N`` accumulated from activations (im2col for Conv);
- :mod:`.propagate`: activations of calibration inputs from onnxruntime;
- :mod:`.analytic`: Hessians from BatchNormalization statistics;
- :mod:`.order`: one group's removal order over all its consumers (one parallel task).
"""
