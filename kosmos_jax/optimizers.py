"""Alias for gin only: config.gin files saved by runs before the training/ package existed say
`from kosmos_jax import optimizers`; this keeps them parsing. Code imports kosmos_jax.training.optimizers."""
from kosmos_jax.training.optimizers import *  # noqa: F401,F403
