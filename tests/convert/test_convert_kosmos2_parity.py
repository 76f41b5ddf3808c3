"""Logit and greedy-generation parity with HF `Kosmos2ForConditionalGeneration` (fp32, eval).

Three tiny random configs (see conftest.KOSMOS2_CONFIGS): different depths, head counts, latent
counts, image sizes, vision activations, tied/untied embeddings, scaled/unscaled embeddings,
scanned/unrolled layer layouts, right and left padding.
"""
import numpy as np
import pytest
import torch

from kosmos_jax.inference import hf_compat

LOGIT_TOL = 1e-4
NEW_TOKENS = 20


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_logits_and_greedy_generation_match_hf(name, hf_model_dir, kosmos2_batch, hf_forward,
                                                kosmos2_specs):
  hf_model, hf_dir = hf_model_dir(name)
  batch = kosmos2_batch(name)
  scan = kosmos2_specs[name]["scan_layers"]
  model = hf_compat.from_pretrained(hf_dir, scan_layers=scan)
  assert model.config.scan_layers == scan

  expected = hf_forward(hf_model, batch)
  got = model(**batch)
  assert got.shape == expected.shape
  real = batch["attention_mask"].astype(bool)   # padded positions are undefined in both
  delta = np.abs(got - expected)[real].max()
  print(f"config {name}: max |logit delta| = {delta:.3g}")
  assert delta <= LOGIT_TOL

  with torch.no_grad():
    hf_ids = hf_model.generate(**{k: torch.from_numpy(v) for k, v in batch.items()},
                               max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                               no_repeat_ngram_size=0).numpy()
  ids = model.generate(**batch, max_new_tokens=NEW_TOKENS)
  np.testing.assert_array_equal(ids, hf_ids)
  new = ids[:, batch["input_ids"].shape[1]:]
  assert new.shape[1] == NEW_TOKENS and len(np.unique(new)) > 3   # not a degenerate repeat


@pytest.mark.parametrize("hf_args", [dict(num_beams=3), dict(no_repeat_ngram_size=2)],
                         ids=["beam3", "no_repeat_2"])
def test_beam_search_and_no_repeat_ngram_match_hf(hf_args, hf_model_dir, kosmos2_batch):
  hf_model, hf_dir = hf_model_dir("a")
  batch = kosmos2_batch("a")
  model = hf_compat.from_pretrained(hf_dir)
  with torch.no_grad():
    hf_ids = hf_model.generate(**{k: torch.from_numpy(v) for k, v in batch.items()},
                               max_new_tokens=8, do_sample=False,
                               **{"num_beams": 1, "no_repeat_ngram_size": 0, **hf_args}).numpy()
  np.testing.assert_array_equal(model.generate(**batch, max_new_tokens=8, **hf_args), hf_ids)


def test_sampling_is_seeded_and_top_k_1_is_greedy(hf_model_dir, kosmos2_batch):
  _, hf_dir = hf_model_dir("a")
  batch = kosmos2_batch("a")
  model = hf_compat.from_pretrained(hf_dir)
  sample = lambda seed, **kw: model.generate(**batch, max_new_tokens=8, do_sample=True,
                                             seed=seed, **kw)
  np.testing.assert_array_equal(sample(0, temperature=2.0), sample(0, temperature=2.0))
  assert not np.array_equal(sample(0, temperature=2.0, top_k=0), sample(1, temperature=2.0, top_k=0))
  np.testing.assert_array_equal(sample(3, top_k=1), model.generate(**batch, max_new_tokens=8))
  with pytest.raises(ValueError, match="unsupported arguments"):
    model.generate(**batch, output_scores=True)
  with pytest.raises(ValueError, match="beam sampling"):
    model.generate(**batch, do_sample=True, num_beams=2)
