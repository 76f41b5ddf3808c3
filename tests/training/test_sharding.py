"""Sharded training on 8 virtual CPU devices: rule presets place params and Adam moments as the
rules say; one step on 8 devices equals one step on 1 device; k-microbatch accumulation equals
the full batch; the LR schedule and trainability masks."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from kosmos_jax.models import param_layout
from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from tests.helpers import tiny
from kosmos_jax.training import trainer as trainer_lib

MESHES = {
    "dp": partitioning.MeshConfig(data=8),
    "fsdp": partitioning.MeshConfig(data=2, fsdp=4),
    "fsdp_tp": partitioning.MeshConfig(data=2, fsdp=2, tensor=2),
}
# (param path, expected spec) per preset, for a scanned tiny model.
EXPECTED = {
    "dp": {"text/layers/self_attn/q_proj/kernel": P(None, None, None, None),
           "text/embed_tokens/embedding": P(None, None),
           "vision/layers/mlp/fc1/kernel": P(None, None, None)},
    "fsdp": {"text/layers/self_attn/q_proj/kernel": P(None, "fsdp", None, None),
             "text/embed_tokens/embedding": P(None, "fsdp"),
             "text/layers/ffn/fc2/kernel": P(None, None, "fsdp"),
             "vision/layers/mlp/fc1/kernel": P(None, "fsdp", None)},
    "fsdp_tp": {"text/layers/self_attn/q_proj/kernel": P(None, "fsdp", "tensor", None),
                "text/layers/self_attn/out_proj/kernel": P(None, "tensor", None, "fsdp"),
                "text/embed_tokens/embedding": P("tensor", "fsdp"),
                "text/layers/ffn/fc1/kernel": P(None, "fsdp", "tensor"),
                "vision/layers/mlp/fc1/kernel": P(None, "fsdp", "tensor")},
}
OPT = optimizers.OptimizerConfig(learning_rate=1e-3, warmup_steps=2, grad_clip_norm=1.0)


@functools.lru_cache(maxsize=None)
def make_trainer(rules: str, devices: int = 8, microbatches: int = 1):
  config = tiny.tiny_config(vision_trainable="last_layer")
  mesh_config = MESHES[rules] if devices == 8 else partitioning.MeshConfig(data=devices)
  mesh = partitioning.make_mesh(mesh_config, jax.devices()[:devices])
  return trainer_lib.Trainer(config, OPT, trainer_lib.TrainerConfig(
      total_steps=10, num_microbatches=microbatches), mesh, rules)


def by_name(tree):
  return {param_layout.path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("rules", list(MESHES))
def test_params_and_adam_moments_follow_the_rules(rules):
  trainer = make_trainer(rules)
  state = trainer.init_state()
  params = by_name(state.params)
  moments = {name: leaf for name, leaf in by_name(state.opt_state).items()
             if "/mu/" in name or "/nu/" in name}
  for name, spec in EXPECTED[rules].items():
    assert params[name].sharding.spec == spec, (rules, name)
    mus = [leaf for key, leaf in moments.items() if key.endswith("/mu/" + name)]
    assert len(mus) == 1, name
    assert mus[0].sharding.spec == spec, (rules, "mu", name)
  # Frozen tower parts (CLIP embeddings under "last_layer") carry no Adam moments at all.
  assert not any("vision/patch_embedding" in k for k in moments)
  assert any("vision/layers/" in k for k in moments)


def _one_step(trainer, seed=0):
  state = trainer.init_state()
  batch = tiny.converter_batch(trainer.model_config, 8, 48, seed=seed)
  state, metrics = trainer.train_step(state, partitioning.global_batch(batch, trainer.mesh),
                                      jax.random.key(1))
  return jax.device_get(state.params), jax.device_get(metrics)


def assert_trees_close(a, b, atol):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=param_layout.path_name(path))


def test_eight_device_step_equals_one_device_step():
  params_8, metrics_8 = _one_step(make_trainer("fsdp_tp", 8))
  params_1, metrics_1 = _one_step(make_trainer("dp", 1))
  np.testing.assert_allclose(metrics_8["loss_sum"], metrics_1["loss_sum"], rtol=1e-6)
  assert_trees_close(params_8, params_1, atol=1e-5)


def test_microbatch_accumulation_equals_full_batch():
  params_full, metrics_full = _one_step(make_trainer("fsdp", 8, 1))
  params_micro, metrics_micro = _one_step(make_trainer("fsdp", 8, 2))
  np.testing.assert_allclose(metrics_micro["loss_sum"], metrics_full["loss_sum"], rtol=1e-6)
  np.testing.assert_allclose(metrics_micro["grad_norm"], metrics_full["grad_norm"], rtol=1e-5)
  assert_trees_close(params_micro, params_full, atol=1e-5)


def test_frozen_clip_layers_do_not_move_but_the_last_one_does():
  trainer = make_trainer("fsdp_tp", 8)
  before = jax.device_get(trainer.init_state().params)
  after, _ = _one_step(trainer)
  vision_layers_before = before["vision"]["layers"]["mlp"]["fc1"]["kernel"]
  vision_layers_after = after["vision"]["layers"]["mlp"]["fc1"]["kernel"]
  np.testing.assert_array_equal(vision_layers_after[:-1], vision_layers_before[:-1])
  assert np.abs(vision_layers_after[-1] - vision_layers_before[-1]).max() > 0
  np.testing.assert_array_equal(after["vision"]["patch_embedding"]["kernel"],
                                before["vision"]["patch_embedding"]["kernel"])
  assert np.abs(after["text"]["layers"]["ffn"]["fc1"]["kernel"]
                - before["text"]["layers"]["ffn"]["fc1"]["kernel"]).max() > 0


def test_paper_schedule_warmup_then_linear_decay_to_zero():
  config = optimizers.OptimizerConfig()           # 2e-4, 375 warm-up, linear decay
  schedule = optimizers.learning_rate_schedule(config, total_steps=300_000)
  assert float(schedule(0)) == pytest.approx(2e-4 / 375, rel=1e-4)
  assert float(schedule(374)) == pytest.approx(2e-4, rel=1e-5)
  assert float(schedule(375 + (300_000 - 375) // 2)) == pytest.approx(1e-4, rel=1e-3)
  assert float(schedule(299_999)) == pytest.approx(0.0, abs=1e-9)


def test_weight_decay_mask_skips_biases_norms_and_position_embeddings():
  params = {"text": {"layers": {"ffn": {"fc1": {"kernel": 0, "bias": 0}},
                                "final_layer_norm": {"scale": 0, "bias": 0}},
                     "embed_tokens": {"embedding": 0}},
            "vision": {"position_embedding": 0, "class_embedding": 0}}
  mask = by_name(optimizers.decay_mask(params))
  assert mask == {"text/layers/ffn/fc1/kernel": True, "text/layers/ffn/fc1/bias": False,
                  "text/layers/final_layer_norm/scale": False,
                  "text/layers/final_layer_norm/bias": False,
                  "text/embed_tokens/embedding": True, "vision/position_embedding": False,
                  "vision/class_embedding": False}


def test_mesh_errors_say_how_to_fix():
  with pytest.raises(ValueError, match="set one axis to -1"):
    partitioning.make_mesh(partitioning.MeshConfig(data=3, fsdp=1, tensor=1))
  with pytest.raises(ValueError, match="divisible by data x fsdp"):
    partitioning.check_batch_size(12, partitioning.make_mesh(MESHES["fsdp"]))


def test_eval_at_start_sees_the_initial_params_and_the_end_sees_the_trained_ones():
  trainer = trainer_lib.Trainer(
      tiny.tiny_config(), OPT, trainer_lib.TrainerConfig(total_steps=2, eval_at_start=True),
      partitioning.make_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1]), "dp")
  state = trainer.init_state()
  initial = jax.device_get(state.params)
  batches = iter([tiny.converter_batch(trainer.model_config, 8, 48, seed=s) for s in (0, 1)])
  seen = []

  def eval_fn(params):
    seen.append(jax.device_get(params))
    return {"task": {"loss": float(len(seen))}}

  state, summary = trainer_lib.run(trainer, state, batches, eval_fn=eval_fn)
  assert summary["eval_start"] == {"task": {"loss": 1.0}}
  assert summary["eval"] == {"task": {"loss": 2.0}}
  assert_trees_close(seen[0], initial, atol=0)
  assert_trees_close(seen[1], jax.device_get(state.params), atol=0)
  moved = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: np.abs(a - b).max(), seen[0], seen[1]))
  assert max(moved) > 0
