"""`--search`: remat policies x microbatch counts x mesh shapes, compiled one by one, fitting
plans first (fastest roofline step, then smallest peak).

Every compile of a paper-size step takes minutes on a CPU host, so the search prunes: a mesh
whose parameters and optimizer state alone exceed HBM is not compiled; for one mesh and remat
policy, more microbatches are tried only while the step does not fit; a heavier remat policy is
tried only when a lighter one did not fit at any microbatch count. `max_compiles` caps the rest.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from kosmos_jax.planning import memory

REMAT_ORDER = ("none", "dots", "minimal", "full")   # least recompute first


def mesh_shapes(num_devices: int, configured: memory.Candidate, batch_size: int,
                tensors: Sequence[int] = (1, 2, 4)) -> list[tuple[int, int, int, str]]:
  """(data, fsdp, tensor, rules) to try: the configured mesh, then FSDP over 8, 16, ... or all
  the devices, times tensor parallelism, keeping only those that split the batch."""
  data = configured.data
  if data == -1 and num_devices % (configured.fsdp * configured.tensor) == 0:
    data = num_devices // (configured.fsdp * configured.tensor)
  shapes = [(data, configured.fsdp, configured.tensor, configured.rules)]
  for tensor in tensors:
    if num_devices % tensor:
      continue
    rest = num_devices // tensor                      # data x fsdp
    fsdps = [8 * 2**i for i in range(20) if 8 * 2**i < rest] + [rest]
    for fsdp in fsdps:
      if rest % fsdp == 0 and batch_size % rest == 0:
        shapes.append((rest // fsdp, fsdp, tensor, "fsdp_tp" if tensor > 1 else "fsdp"))
  unique = []
  for shape in shapes:
    if shape not in unique:
      unique.append(shape)
  return unique


def _rank(result: dict[str, Any]) -> tuple:
  seconds = result.get("roofline_step_seconds") or float("inf")
  return (not result.get("fits"), seconds, result.get("peak_bytes") or float("inf"))


def search(setup: memory.Setup, plan_fn: Callable[[memory.Setup], dict[str, Any]],
           remats: Sequence[str], microbatches: Sequence[int],
           shapes: Sequence[tuple[int, int, int, str]], hbm_bytes: float,
           max_compiles: int, report: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Compiles candidates (see the module docstring); all results, best first."""
  results, compiles = [], 0
  for data, fsdp, tensor, rules in shapes:
    for remat in sorted(remats, key=REMAT_ORDER.index):
      fitted = False
      for k in sorted(microbatches):
        if compiles >= max_compiles:
          report(f"stopped after --max_compiles={max_compiles} compiles")
          return sorted(results, key=_rank)
        candidate = memory.Candidate(remat, k, data, fsdp, tensor, rules)
        outcome = _try(setup, candidate, plan_fn, hbm_bytes, report)
        if outcome is None:
          continue
        compiles += "skipped" not in outcome
        results.append(outcome)
        report(_line(outcome))
        if outcome.get("fits") or "skipped" in outcome:
          fitted = bool(outcome.get("fits"))
          break
      if fitted and results[-1]["num_microbatches"] == min(microbatches):
        break      # fits without extra microbatches: heavier remat only costs time
  return sorted(results, key=_rank)


def _try(setup, candidate, plan_fn, hbm_bytes, report):
  """One candidate's plan, a 'skipped' record, or None (reported) when the batch or an array
  cannot be split over that mesh."""
  configured = memory.configure(setup, candidate)
  try:
    return plan_fn(configured)
  except memory.StateTooLarge as e:
    return {**_fields(candidate), "fits": False, "skipped": str(e), "peak_bytes": e.bytes,
            "hbm_bytes": hbm_bytes}
  except ValueError as e:     # batch / an array not divisible by this mesh (x microbatches)
    report(f"  skip {candidate.label()}: {' '.join(str(e).split())[:300]}")
    return None


def _fields(c: memory.Candidate) -> dict[str, Any]:
  return {"remat_policy": c.remat, "num_microbatches": c.microbatches,
          "mesh": {"data": c.data, "fsdp": c.fsdp, "tensor": c.tensor}, "rules": c.rules}


def describe(result: dict[str, Any]) -> str:
  m = result["mesh"]
  return (f"remat={result['remat_policy']} microbatches={result['num_microbatches']} "
          f"mesh=data:{m['data']},fsdp:{m['fsdp']},tensor:{m['tensor']} rules={result['rules']}")


def _line(result: dict[str, Any]) -> str:
  gib = (result.get("peak_bytes") or 0) / 2**30
  verdict = "fits" if result.get("fits") else "does not fit"
  extra = f" ({result['skipped']})" if "skipped" in result else ""
  seconds = result.get("roofline_step_seconds")
  timing = f", roofline {seconds:.2f} s/step" if seconds else ""
  return f"  {describe(result)}: peak {gib:.1f} GiB, {verdict}{timing}{extra}"


def summary_lines(results: Sequence[dict[str, Any]]) -> Iterator[str]:
  fitting = [r for r in results if r.get("fits")]
  yield f"{len(fitting)} of {len(results)} tried plans fit, best first:"
  for r in fitting:
    yield _line(r)
  for r in results:
    if not r.get("fits"):
      yield _line(r).replace("  ", "  [no] ", 1)

