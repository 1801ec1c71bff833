"""The removal machinery behind the ``prune`` pass: selection, cost model, patches, slicing."""
