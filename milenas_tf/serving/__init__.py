"""Serving: the SavedModel export for TF Serving, its messages, and the local, REST
and gRPC clients.

May import `core`, `data` and `train`; never `search` or `benchmarks`.
"""
