"""Alias for gin only: config.gin files saved by runs before the training/ package existed say
`from kosmos_jax import partitioning`; this keeps them parsing. Code imports kosmos_jax.training.partitioning."""
from kosmos_jax.training.partitioning import *  # noqa: F401,F403
