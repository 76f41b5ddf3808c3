"""Alias for gin only: config.gin files saved by runs before the training/ package existed say
`from kosmos_jax import trainer`; this keeps them parsing. Code imports kosmos_jax.training.trainer."""
from kosmos_jax.training.trainer import *  # noqa: F401,F403
