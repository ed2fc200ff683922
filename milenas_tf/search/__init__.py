"""The architecture search: the mixed-op cell and search network, the search model
and its passes, one pure function per update rule, the second-order products, the
configuration, the run (a task of `core.driver`), the derived cells' size and
alpha's history over the epochs, and the method comparison.

May import `core`, `data` and `space`; never `train`, `serving` or `benchmarks`.
"""
