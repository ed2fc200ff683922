"""TensorFlow's graph optimiser (Grappler) settings for the search and training functions.

Two settings, applied together by `apply`. They take effect for functions that
first run after it, called from the thread that called it (as Keras's `fit` calls
the step functions); the functions compute the same values either way.

Op fusion ("remapping").

TensorFlow's graph optimiser rewrites patterns of ops into fused kernels before a
function first runs; among them a training-mode batch norm followed by a ReLU
(`_FusedBatchNormEx`). With oneDNN on a CPU that fused kernel is slower than the two
ops it replaces at some channel counts, and the fused graph keeps more memory, so the
remapper is off on CPUs by default (figures: docs/benchmarks.md).

`config.remapping` names the setting:

- "auto": off when no GPU is visible, on otherwise (GPU fusions are TensorFlow's
  own choice);
- "on", "off".

The amount of optimisation (`config.graph_optimizer`). Grappler optimises a
function's graph when it first runs; for the search step, whose graph holds the
network's forward and backward pass several times over, that takes most of the
time to the first step. By default Grappler makes two rounds over the graph and
runs its memory optimiser; the second round changes little of these graphs and the
memory optimiser adds nodes, so "light" skips both (figures: docs/benchmarks.md).

- "light" (the default): one round, no memory optimiser;
- "full": TensorFlow's defaults.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.python.eager import context

from milenas_tf.core import validation

REMAPPING = ("auto", "on", "off")
GRAPH_OPTIMIZER = ("light", "full")


def resolve(spec: str) -> bool:
  """Whether a config's `remapping` setting turns Grappler's remapper on.

  Raises:
    UserInputError: for an unknown setting.
  """
  validation.check_choice("remapping setting", spec, REMAPPING)
  if spec == "auto":
    return bool(tf.config.list_logical_devices("GPU"))
  return spec == "on"


def check_graph_optimizer(spec: str) -> str:
  """Validates a `graph_optimizer` setting.

  Raises:
    UserInputError: for an unknown setting.
  """
  return validation.check_choice("graph_optimizer setting", spec, GRAPH_OPTIMIZER)


def apply(remapping: str = "auto", graph_optimizer: str = "light") -> bool:
  """Sets Grappler's remapper and amount of optimisation for this thread's function
  calls (the thread that calls the functions, as Keras's `fit` does).

  Args:
    remapping: a setting of `REMAPPING`.
    graph_optimizer: a setting of `GRAPH_OPTIMIZER`.

  Returns:
    Whether the remapper is on.

  Raises:
    UserInputError: for an unknown setting.
  """
  enabled = resolve(remapping)
  check_graph_optimizer(graph_optimizer)
  # Resets this thread's function-call options to those of the context.
  tf.config.optimizer.set_experimental_options({"remapping": enabled})
  if graph_optimizer == "light":
    # Neither option is reachable through `tf.config.optimizer`: the call options
    # of `tf.function` carry the whole ConfigProto.
    proto = _function_call_config()
    rewrite = proto.graph_options.rewrite_options
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    rewrite.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    context.context().function_call_options = context.FunctionCallOptions(
        config_proto=proto)
  return enabled


def rewrite_options() -> rewriter_config_pb2.RewriterConfig:
  """The Grappler options this thread's function calls run with."""
  return _function_call_config().graph_options.rewrite_options


def _function_call_config() -> config_pb2.ConfigProto:
  """A copy of the ConfigProto this thread's `tf.function` calls run with."""
  return config_pb2.ConfigProto.FromString(
      context.context().function_call_options.config_proto_serialized)
