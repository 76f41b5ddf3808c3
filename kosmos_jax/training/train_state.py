"""Train state (step, params, optimizer state), initialised directly sharded over the mesh.

Shardings come from the model's logical axes: the state is first built abstractly from *boxed*
parameters (so Adam's moments inherit the boxes), the boxes give PartitionSpecs through the rule
preset, and the real state is created by a jit with those out_shardings — no device ever holds a
full copy (MaxText / flax lm1b pattern).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
from flax import struct
import jax
import optax

from kosmos_jax.training import partitioning
from kosmos_jax.models import kosmos
from kosmos_jax.models.config import KosmosConfig


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, grads: Any) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


def _boxed_state(config: KosmosConfig, tx: optax.GradientTransformation,
                 rng: jax.Array) -> TrainState:
  params = kosmos.init_variables(config, rng)["params"]
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    opt_state=tx.init(params), tx=tx)


class StateFactory:
  """Abstract shapes, shardings and sharded initialisation of the train state on a mesh.

  `tx_factory(abstract_boxed_params)` builds the optimizer once from parameter names and shapes
  (masks depend on them), so every state this factory makes shares one static `tx`.
  """

  def __init__(self, config: KosmosConfig, tx_factory: Callable[[Any], optax.GradientTransformation],
               mesh, rules):
    self.config, self.mesh, self.rules = config, mesh, rules
    abstract_params = kosmos.abstract_variables(config)["params"]
    self.tx = tx_factory(abstract_params)
    boxed = jax.eval_shape(lambda r: _boxed_state(config, self.tx, r), jax.random.key(0))
    self.shardings = partitioning.logical_shardings(boxed, mesh, rules)
    self.abstract = nn.unbox(boxed)           # ShapeDtypeStructs, same tree as the real state

  def abstract_with_shardings(self) -> TrainState:
    """Restore target: ShapeDtypeStructs carrying the current mesh's shardings."""
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        self.abstract, self.shardings)

  def init(self, rng: jax.Array) -> TrainState:
    fn = lambda r: nn.unbox(_boxed_state(self.config, self.tx, r))
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return jax.jit(fn, out_shardings=self.shardings)(rng)

  def with_params(self, state: TrainState, params: Any) -> TrainState:
    """Replaces params (e.g. from converted HF weights), placing them on the state's shardings."""
    return state.replace(params=jax.device_put(params, self.shardings.params))
