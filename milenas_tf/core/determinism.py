"""TensorFlow's op determinism for the length of a run (`config.deterministic`).

With it, every op that has a nondeterministic kernel (GPU scatter-adds and
reductions, cuDNN's autotuned convolutions, parallel tf.data stages) runs a
deterministic one or raises, so two runs with the same seed on the same machine,
device and software versions produce the same numbers bit for bit. It costs
speed on GPUs and gives no agreement across devices, machines or TensorFlow
versions: the kernels themselves differ there.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from tensorflow.python.framework import config as tf_config  # disable_op_determinism


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
  """Turns op determinism on inside the block when `enabled`, as it was after it."""
  if not enabled or tf_config.is_op_determinism_enabled():
    yield
    return
  tf_config.enable_op_determinism()
  try:
    yield
  finally:
    tf_config.disable_op_determinism()


def enabled() -> bool:
  """Whether op determinism is on now."""
  return tf_config.is_op_determinism_enabled()
