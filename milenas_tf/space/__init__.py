"""The DARTS search space: the primitives' exact kernels (`kernels`) and Keras
layers (`layers`), genotypes as data (`genotypes`) and their drawings (`drawing`).

May import `core` only.
"""
