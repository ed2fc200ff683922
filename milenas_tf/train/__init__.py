"""Training a searched cell from scratch: the evaluation networks and their size,
the recipes' configurations, the training model, its callbacks, the run (a task of
`core.driver`) and reading a finished run back.

May import `core`, `data` and `space`; never `search`, `serving` or `benchmarks`.
"""
