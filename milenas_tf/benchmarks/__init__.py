"""The benchmark: one job per fresh process (`jobs`) and the runner that lists,
repeats and compares them (`runner`).

Nothing in the library imports this package; it may import every other one.
"""
