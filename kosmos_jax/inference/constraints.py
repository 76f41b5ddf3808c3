"""Constrained decoding: the candidate set as a token trie that the decoding loop walks.

Used by `decoding.decode(..., constraint=PrefixTrie.from_candidates(...))`, e.g. to rank class
names for zero-shot ImageNet the way the paper does (generation restricted to the candidates).
"""
from __future__ import annotations

from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@flax.struct.dataclass
class PrefixTrie:
  """A set of candidate token sequences as trie edges, for decoding constrained to the set.

  Node 0 is the root; edge e goes from node `parent[e]` to node `child[e]` with token `token[e]`.
  Every candidate ends with `eos_id` (appended when missing), so a row that is constrained stops
  exactly at the end of a candidate, and a candidate that is a prefix of another stays reachable.
  Edge arrays (rather than a [nodes, vocab] table) keep 1,000 ImageNet names in a few KiB.
  """
  parent: Array    # [edges] int32
  token: Array     # [edges] int32
  child: Array     # [edges] int32
  eos_id: int = flax.struct.field(pytree_node=False)

  @classmethod
  def from_candidates(cls, candidates: Sequence[Sequence[int]], eos_id: int) -> "PrefixTrie":
    """Builds the trie of `candidates` (lists of token ids, without or with a final eos)."""
    if not candidates:
      raise ValueError("PrefixTrie needs at least one candidate")
    children: dict[tuple[int, int], int] = {}
    for i, candidate in enumerate(candidates):
      seq = [int(t) for t in candidate]
      if not seq or seq == [eos_id]:
        raise ValueError(f"candidate {i} is empty; every candidate needs at least one token")
      if eos_id in seq[:-1]:
        raise ValueError(f"candidate {i} has eos_id={eos_id} before its end: {seq}")
      if min(seq) < 0:
        raise ValueError(f"candidate {i} has a negative token id: {seq}")
      node = 0
      for t in seq if seq[-1] == eos_id else seq + [eos_id]:
        node = children.setdefault((node, t), len(children) + 1)
    edges = np.array([(p, t, c) for (p, t), c in children.items()], np.int32)   # [edges, 3]
    return cls(parent=jnp.asarray(edges[:, 0]), token=jnp.asarray(edges[:, 1]),
               child=jnp.asarray(edges[:, 2]), eos_id=int(eos_id))

  def allowed(self, node: Array, vocab: int) -> Array:
    """[rows] node ids -> [rows, vocab] bool, the tokens that continue some candidate."""
    hit = (self.parent[None, :] == node[:, None]).astype(jnp.int32)          # [rows, edges]
    rows = jnp.arange(node.shape[0])[:, None]
    counts = jnp.zeros((node.shape[0], vocab), jnp.int32)
    return counts.at[rows, self.token[None, :]].add(hit) > 0

  def next_node(self, node: Array, token: Array) -> Array:
    """[rows] node, [rows] token -> [rows] child node (-1 if the token leaves the trie)."""
    hit = (self.parent[None, :] == node[:, None]) & (self.token[None, :] == token[:, None])
    return jnp.max(jnp.where(hit, self.child[None, :], -1), axis=1)
