"""--multiprocess and its explicit settings: the kwargs handed to jax.distributed.initialize(),
one-line errors for an inconsistent cluster, and when gloo CPU collectives are switched on.
No real distributed initialisation happens here."""
import pytest

from kosmos_jax import gin_utils


def test_single_process_and_auto_detection():
  assert gin_utils.distributed_args(False) is None
  assert gin_utils.distributed_args(True) == {}     # Cloud TPU / SLURM detect the rest


def test_explicit_settings_are_passed_through():
  assert gin_utils.distributed_args(True, "127.0.0.1:12355", 4, 3) == {
      "coordinator_address": "127.0.0.1:12355", "num_processes": 4, "process_id": 3}
  assert gin_utils.distributed_args(True, "host:1", 1)["process_id"] == 0


@pytest.mark.parametrize("args, expected", [
    ((False, "127.0.0.1:1", 2, 0), r"need --multiprocess"),
    ((True, "127.0.0.1:1"), r"needs both --coordinator_address=HOST:PORT and --num_processes"),
    ((True, None, 2, 0), r"needs both --coordinator_address"),
    ((True, "127.0.0.1:1", 2, 2), r"--process_id=2 must be in 0..1"),
    ((True, "127.0.0.1:1", 2, -1), r"--process_id=-1 must be in 0..1"),
    ((True, "127.0.0.1:1", 0, 0), r"--num_processes=0 must be at least 1"),
    ((True, "127.0.0.1:1", 2), r"needs --process_id=0..1"),
    ((True, "127.0.0.1", 2, 0), r"write HOST:PORT"),
])
def test_inconsistent_settings_are_one_line_errors(args, expected):
  with pytest.raises(ValueError, match=expected) as info:
    gin_utils.distributed_args(*args)
  assert "\n" not in str(info.value)


def test_cpu_collectives():
  assert gin_utils.cpu_collectives("auto", 2, platform_is_cpu=True) == "gloo"
  assert gin_utils.cpu_collectives("auto", 1, platform_is_cpu=True) is None
  assert gin_utils.cpu_collectives("auto", None, platform_is_cpu=True) is None
  assert gin_utils.cpu_collectives("auto", 8, platform_is_cpu=False) is None
  assert gin_utils.cpu_collectives("mpi", 8, platform_is_cpu=False) == "mpi"
  assert gin_utils.cpu_collectives("none", 8, platform_is_cpu=True) is None


def test_the_flags_reach_initialize(monkeypatch):
  """maybe_initialize_distributed() reads the flags and calls initialize with them."""
  import jax  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  calls, updates = [], []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
  monkeypatch.setattr(gin_utils, "_platform_is_cpu", lambda: True)
  values = {"multiprocess": True, "coordinator_address": "127.0.0.1:5", "num_processes": 2,
            "process_id": 1}
  fv = flags.FLAGS
  if not fv.is_parsed():
    fv.mark_as_parsed()
  for name, value in values.items():
    monkeypatch.setattr(fv[name], "value", value)
  gin_utils.maybe_initialize_distributed()
  assert calls == [{"coordinator_address": "127.0.0.1:5", "num_processes": 2, "process_id": 1}]
  assert updates == [("jax_cpu_collectives_implementation", "gloo")]
