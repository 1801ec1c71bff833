"""The OBS kernels: layer-wise Hessians, structured OBS linear algebra, ordering, threads.

This package is a library over plain arrays. It depends on numpy and scipy, plus
threadpoolctl (tiny and pure Python) to keep BLAS to one thread when layers run in
parallel. It knows nothing of passes, the pipeline context, onnx_ir or onnxruntime, so
that a worker process, possibly on another machine, can import it alone and solve
layers or groups shipped to it as arrays (``tests/test_obs_isolation.py`` checks that
importing it pulls in none of those). The ``obspa`` pass (:mod:`spa_opt.passes.obspa`)
wraps it; finding the layers in a graph and collecting their activations live beside
the pass, in :mod:`spa_opt.passes.obspa_graph`.

- :mod:`.linalg`: the OBS maths on one layer (costs, removal with downdate, the
  least-squares reconstruction);
- :mod:`.hessian`: ``H = 2 X Xᵀ / N`` accumulated from activation arrays (im2col for
  convolutions, from plain convolution parameters);
- :mod:`.order`: one group's removal order over all its consumers (one parallel task);
- :mod:`.threads`: running independent tasks on the cores without oversubscribing BLAS.

The package imports none of its modules here, so importing one costs only that one.
"""
