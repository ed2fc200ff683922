"""The baseline of the search-step figures: a MiLeNAS step in PyTorch, timed here.

The step targets of docs/benchmarks.md were stated beside the reference (PyTorch)
implementation's step on the machine where they were set. Machines of the same
size differ by more than a factor of two on this step, so this script times that
baseline on the machine at hand: the DARTS search network built from the
reference implementation's modules (a MixedOp per edge summing all eight weighted
primitives, batch norm without affine terms in the cells, the same stem and
classifier), and one first-order MiLeNAS step as the reference code takes it:
grad_alpha of L_val and of L_tr (two forward/backward passes) and an Adam step on
alpha, then grad_w L_tr at the new alpha, clipping and an SGD step on w. Random
inputs, as `bin/benchmark.py`.

It needs PyTorch, which milenas_tf does not depend on; run it in its own
environment:

  python -m venv /tmp/torch
  /tmp/torch/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
  /tmp/torch/bin/python docs/calibration/pytorch_search_step.py --config=paper

It prints one JSON object with `bin/benchmark.py`'s keys: `first_step_s` (from
the start of model construction to the end of the first step), `step_s` (median
of the following steps), `images_per_s`, `peak_memory_mb` (peak RSS, MiB).
"""

import argparse
import json
import resource
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

# C, cells, batch (32x32x3 inputs): milenas_tf.benchmarks.SEARCH_CONFIGS's paper and
# small entries, written out because this script runs without TensorFlow.
CONFIGS = {"paper": (16, 8, 64), "small": (8, 5, 32)}


class DilConv(nn.Sequential):
  def __init__(self, c_in, c_out, size, stride, padding, dilation):
    super().__init__(
        nn.ReLU(), nn.Conv2d(c_in, c_in, size, stride, padding, dilation=dilation,
                             groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=False))


class SepConv(nn.Sequential):
  def __init__(self, c, size, stride, padding):
    super().__init__(DilConv(c, c, size, stride, padding, 1),
                     DilConv(c, c, size, 1, padding, 1))


class ReLUConvBN(nn.Sequential):
  def __init__(self, c_in, c_out):
    super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False),
                     nn.BatchNorm2d(c_out, affine=False))


class FactorizedReduce(nn.Module):
  def __init__(self, c_in, c_out):
    super().__init__()
    self.a = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
    self.b = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
    self.bn = nn.BatchNorm2d(c_out, affine=False)

  def forward(self, x):
    x = F.relu(x)
    return self.bn(torch.cat([self.a(x), self.b(x[:, :, 1:, 1:])], 1))


class Zero(nn.Module):
  def __init__(self, stride):
    super().__init__()
    self.stride = stride

  def forward(self, x):
    return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class MixedOp(nn.Module):
  def __init__(self, c, stride):
    super().__init__()
    self.ops = nn.ModuleList([
        Zero(stride),
        nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False)),
        nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False),
                      nn.BatchNorm2d(c, affine=False)),
        nn.Identity() if stride == 1 else FactorizedReduce(c, c),
        SepConv(c, 3, stride, 1), SepConv(c, 5, stride, 2),
        DilConv(c, c, 3, stride, 2, 2), DilConv(c, c, 5, stride, 4, 2)])

  def forward(self, x, weights):
    return sum(w * op(x) for w, op in zip(weights, self.ops))


class Cell(nn.Module):
  def __init__(self, c_prev_prev, c_prev, c, reduction, reduction_prev):
    super().__init__()
    self.reduction = reduction
    self.pre0 = (FactorizedReduce(c_prev_prev, c) if reduction_prev
                 else ReLUConvBN(c_prev_prev, c))
    self.pre1 = ReLUConvBN(c_prev, c)
    self.ops = nn.ModuleList(MixedOp(c, 2 if reduction and j < 2 else 1)
                             for i in range(4) for j in range(2 + i))

  def forward(self, s0, s1, weights):
    states, offset = [self.pre0(s0), self.pre1(s1)], 0
    for _ in range(4):
      states.append(sum(self.ops[offset + j](h, weights[offset + j])
                        for j, h in enumerate(states)))
      offset += len(states) - 1
    return torch.cat(states[2:], 1)


class SearchNetwork(nn.Module):
  def __init__(self, c, num_cells, num_classes=10):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 3 * c, 3, padding=1, bias=False),
                              nn.BatchNorm2d(3 * c))
    c_prev_prev = c_prev = 3 * c
    self.cells, reduction_prev = nn.ModuleList(), False
    for i in range(num_cells):
      reduction = i in (num_cells // 3, 2 * num_cells // 3)
      c = 2 * c if reduction else c
      self.cells.append(Cell(c_prev_prev, c_prev, c, reduction, reduction_prev))
      reduction_prev, c_prev_prev, c_prev = reduction, c_prev, 4 * c
    self.classifier = nn.Linear(c_prev, num_classes)
    self.alphas_normal = nn.Parameter(1e-3 * torch.randn(14, 8))
    self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(14, 8))

  def forward(self, x):
    s0 = s1 = self.stem(x)
    normal = F.softmax(self.alphas_normal, -1)
    reduce = F.softmax(self.alphas_reduce, -1)
    for cell in self.cells:
      s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
    return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", choices=sorted(CONFIGS), default="paper")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
  args = parser.parse_args()
  channels, num_cells, batch = CONFIGS[args.config]
  torch.manual_seed(0)
  start = time.perf_counter()
  net = SearchNetwork(channels, num_cells)
  alphas = [net.alphas_normal, net.alphas_reduce]
  weights = [p for p in net.parameters() if all(p is not a for a in alphas)]
  w_optimizer = torch.optim.SGD(weights, 0.025, momentum=0.9, weight_decay=3e-4)
  a_optimizer = torch.optim.Adam(alphas, 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
  x_train, x_val = torch.randn(2, batch, 3, 32, 32)
  y_train, y_val = torch.randint(0, 10, (2, batch))

  def step():
    a_optimizer.zero_grad()
    F.cross_entropy(net(x_val), y_val).backward()
    F.cross_entropy(net(x_train), y_train).backward()
    a_optimizer.step()
    w_optimizer.zero_grad()
    F.cross_entropy(net(x_train), y_train).backward()
    nn.utils.clip_grad_norm_(weights, 5.0)
    w_optimizer.step()

  step()
  first = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  print(json.dumps({
      "benchmark": "pytorch_search_step", "config": args.config, "method": "milenas",
      "order": "reference", "torch": torch.__version__, "threads": torch.get_num_threads(),
      "first_step_s": round(first, 2), "step_s": round(step_s, 3),
      "images_per_s": round(batch / step_s, 2),
      "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
  main()
