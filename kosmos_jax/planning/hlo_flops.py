"""How much XLA's FLOP count misses by counting each while-loop body once.

`cost_analysis()` counts a while loop's body once, so where the layers' `nn.scan` (or the
microbatch `lax.scan`) stays a loop — XLA:CPU — it reports a fraction of the step. This walks
the optimized HLO text: every `dot` and `convolution` is 2 x output elements x contracted size,
and a computation called from a while loop counts `known_trip_count` times (XLA:CPU records it in
the loop's backend_config; on TPU, the bound in the loop condition). `loop_factor` = that count over the same count with every loop run
once; the planner scales XLA's FLOPs by it. The TPU compiler unrolls these loops (factor 1) and
writes many matmuls as windowed convolutions this simple count does not size exactly, which is
why only the ratio is used.
"""
from __future__ import annotations

import functools
import math
import re

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"^\w+\[([\d,]*)\]")
_OPERANDS = re.compile(r"%([\w.\-]+)")
_CALLEES = re.compile(r"(?:calls|body|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_CONDITION = re.compile(r"condition=%([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=\w+_(\w+)->")


def _dims(text: str) -> tuple[int, ...]:
  return tuple(int(d) for d in text.split(",") if d)


def _parse(hlo_text: str):
  """{computation: [(name, shape, op, rest of line)]} and the entry computation's name."""
  computations: dict[str, list] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(1)
      computations[current] = []
      if line.startswith("ENTRY"):
        entry = current
      continue
    instr = _INSTR.match(line) if current else None
    if instr:
      name, shape, op, rest = instr.groups()
      array = _ARRAY.match(shape)           # tuple-shaped results (while, ...) get ()
      computations[current].append((name, _dims(array.group(1)) if array else (), op, rest))
  return computations, entry


def _matmul_flops(op: str, shape: tuple[int, ...], rest: str, shapes: dict) -> float:
  operands = _OPERANDS.findall(rest.split(")")[0])
  if len(operands) < 2 or operands[0] not in shapes or operands[1] not in shapes:
    return 0.0
  lhs, rhs = shapes[operands[0]], shapes[operands[1]]
  if op == "dot":
    contract = _CONTRACT.search(rest)
    size = math.prod(lhs[d] for d in _dims(contract.group(1))) if contract else 1
    return 2.0 * math.prod(shape) * size
  labels = _DIM_LABELS.search(rest)            # convolution: kernel size / output features
  if not labels or "o" not in labels.group(1) or not rhs:
    return 0.0
  out_features = rhs[labels.group(1).index("o")]
  return 2.0 * math.prod(shape) * math.prod(rhs) / max(out_features, 1)


def _condition_bound(computations: dict, rest: str) -> int:
  """The loop bound from the condition's integer constant (the TPU compiler's HLO has no
  known_trip_count): `i < N` with i counting from 0. 1 when there is none."""
  condition = _CONDITION.search(rest)
  bounds = [int(r.split(")")[0]) for _, shape, op, r in
            computations.get(condition.group(1) if condition else "", [])
            if op == "constant" and shape == () and r.split(")")[0].isdigit()]
  return max(bounds) if bounds else 1


def matmul_flops(hlo_text: str, count_trips: bool = True) -> float:
  """FLOPs of the dots and convolutions of `hlo_text` (one device's program), with loops run
  `known_trip_count` times (or once each, without count_trips)."""
  computations, entry = _parse(hlo_text)
  if entry is None:
    return 0.0

  @functools.lru_cache(maxsize=None)
  def total(name: str) -> float:
    instructions = computations.get(name, [])
    shapes = {n: s for n, s, _, _ in instructions}
    flops = 0.0
    for _, shape, op, rest in instructions:
      if op in ("dot", "convolution"):
        flops += _matmul_flops(op, shape, rest, shapes)
      trips = 1
      if op == "while" and count_trips:
        trip = _TRIP.search(rest)
        trips = int(trip.group(1)) if trip else _condition_bound(computations, rest)
      callees = _CALLEES.findall(rest)
      for branches in _BRANCHES.findall(rest):
        callees += _OPERANDS.findall(branches)
      for callee in callees:
        if callee in computations and callee != name:
          flops += trips * total(callee)
    return flops
  return total(entry)


def loop_factor(hlo_text: str) -> float:
  """Matmul FLOPs with loops run in full over those with each loop body once (>= 1)."""
  once = matmul_flops(hlo_text, count_trips=False)
  return matmul_flops(hlo_text) / once if once > 0 else 1.0
