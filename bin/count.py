#!/usr/bin/env python3
"""Parameters and mult-adds of a genotype's evaluation network.

  python bin/count.py --genotype=DARTS_V2 --setting=cifar10
  python bin/count.py --genotype=runs/search/genotype.json --setting=imagenet --json
  python bin/count.py --genotype=MILENAS_3_87M --setting=imagenet --fit_budget

Parameters are trainable weights without the auxiliary head; mult-adds are those of
the convolutions and classifier for one image in inference (milenas_tf/train/model_size.py).
"""

import json

from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.train import model_size
from milenas_tf.train import networks

_GENOTYPE = flags.DEFINE_string("genotype", "MILENAS_3_87M",
                                "Published genotype name or alias, or a genotype JSON file.")
_SETTING = flags.DEFINE_enum("setting", "cifar10", sorted(networks.SETTINGS),
                             "Evaluation setting.")
_INIT_CHANNELS = flags.DEFINE_integer("init_channels", None,
                                      "Initial channels C (default: the setting's).")
_LAYERS = flags.DEFINE_integer("layers", None, "Number of cells L (default: the setting's).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")
_FIT_BUDGET = flags.DEFINE_bool(
    "fit_budget", False, "Also find the largest even C within --budget mult-adds.")
_BUDGET = flags.DEFINE_integer("budget", model_size.MOBILE_BUDGET, "Mult-add budget.")


def main(argv):
  cli.check_no_arguments(argv)
  result = model_size.describe(_GENOTYPE.value, _SETTING.value, _INIT_CHANNELS.value,
                               _LAYERS.value)
  if _FIT_BUDGET.value:
    log = None if _JSON.value else (
        lambda c, m: print(f"  C={c}: {m / 1e6:.1f}M mult-adds", flush=True))
    result["budget"] = _BUDGET.value
    result["largest_init_channels_in_budget"] = model_size.largest_channels_under_budget(
        _GENOTYPE.value, _SETTING.value, _BUDGET.value, _LAYERS.value, progress=log)
  if _JSON.value:
    print(json.dumps(result))
    return
  print(f"{result['genotype']} in the {result['setting']} setting "
        f"(C={result['init_channels']}, {result['num_cells']} cells, "
        f"{'x'.join(map(str, result['input_shape']))} input):")
  print(f"  parameters: {result['params']:,} ({result['params'] / 1e6:.2f}M)")
  print(f"  mult-adds:  {result['mult_adds']:,} ({result['mult_adds'] / 1e6:.1f}M)")
  if _FIT_BUDGET.value:
    print(f"  largest C within {_BUDGET.value / 1e6:.0f}M mult-adds: "
          f"{result['largest_init_channels_in_budget']}")


if __name__ == "__main__":
  cli.run(main)
