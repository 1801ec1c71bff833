"""Mutation fuzzing of the CLI contract (issue 16).

``mutations`` makes seeded, reproducible mutants of ONNX models; ``oracle`` runs
``spa-opt`` on one in a forked worker and judges the run the way a user would see it
(exit code, stderr lines, files written, the output's validity); ``minimise`` shrinks
a failing mutant to a small reproducer. ``bench/fuzz.py`` drives long runs and
``tests/test_fuzz.py`` a fixed seed set in CI.
"""
