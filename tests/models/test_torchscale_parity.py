"""The xPos + Sub-LN text decoder against the reference implementation itself: torchscale 0.3.0's
`Decoder(DecoderConfig(subln=True, xpos_rel_pos=True, no_scale_embedding=False))`, same weights.

torchscale imports timm only for `drop_path`; timm would drag in torchvision, so a tiny stand-in
`timm.models.layers` module is registered before torchscale is imported.
"""
import sys
import types

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _install_timm_stand_in():
  if "timm.models.layers" in sys.modules:
    return
  def drop_path(x, drop_prob=0.0, training=False):
    if not drop_prob or not training:
      return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep
  timm = types.ModuleType("timm")
  models = types.ModuleType("timm.models")
  layers = types.ModuleType("timm.models.layers")
  layers.drop_path = drop_path
  timm.models, models.layers = models, layers
  sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


_install_timm_stand_in()
torchscale_config = pytest.importorskip("torchscale.architecture.config")
torchscale_decoder = pytest.importorskip("torchscale.architecture.decoder")

from kosmos_jax.checkpointing import params_io  # noqa: E402
from tests.helpers import tiny  # noqa: E402
from kosmos_jax.convert import hf_kosmos2  # noqa: E402
from kosmos_jax.convert import mapping  # noqa: E402
from kosmos_jax.models import kosmos  # noqa: E402
from kosmos_jax.models import positions  # noqa: E402

VOCAB, DIM, HEADS, FFN, LAYERS = 96, 32, 4, 64, 3


def build_torchscale(seed=0):
  torch.manual_seed(seed)
  args = torchscale_config.DecoderConfig(
      vocab_size=VOCAB, decoder_embed_dim=DIM, decoder_attention_heads=HEADS,
      decoder_ffn_embed_dim=FFN, decoder_layers=LAYERS, subln=True, xpos_rel_pos=True,
      xpos_scale_base=512, no_scale_embedding=False, share_decoder_input_output_embed=True,
      dropout=0.0, attention_dropout=0.0, activation_fn="gelu")
  embed = torch.nn.Embedding(VOCAB, DIM, padding_idx=1)
  torch.nn.init.normal_(embed.weight, 0, DIM ** -0.5)
  model = torchscale_decoder.Decoder(args, embed_tokens=embed)
  # Biases and LayerNorm affine params are non-trivial so a misplaced one cannot hide.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name or "ln" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def text_params_from_torchscale(model, config):
  """torchscale's decoder uses HF Kosmos-2's text key names: map them with the converter's rules."""
  state = {"text_model.model." + k: v.detach().numpy() for k, v in model.state_dict().items()
           if k != "output_projection.weight"}                       # tied to embed_tokens
  text_rules = [r for r in hf_kosmos2.rules(config) if r.path.startswith("text/")]
  expected = {path: leaf for path, leaf in mapping.flatten(params_io.abstract_params(config)).items()
              if path.startswith("text/")}
  # torchscale keeps the xPos decay bases as a buffer: they must be our zeta_j.
  zeta = np.asarray(positions.xpos_decay_base(DIM // HEADS))
  for name, value in state.items():
    if name.endswith("xpos.scale"):
      np.testing.assert_allclose(value, zeta, rtol=1e-6)
  flat = mapping.import_tensors(state, text_rules, expected, source="torchscale decoder",
                                ignore=lambda name: name.endswith("xpos.scale"))
  return mapping.unflatten(flat)["text"]


@pytest.fixture(scope="module")
def models():
  reference = build_torchscale()
  config = tiny.tiny_config(
      scan_layers=False, text__vocab_size=VOCAB, text__embed_dim=DIM, text__num_heads=HEADS,
      text__ffn_dim=FFN, text__num_layers=LAYERS, text__xpos=True, text__abs_pos="none")
  params = jax.jit(lambda r: kosmos.init_params(config, r))(jax.random.key(0))
  params["text"] = text_params_from_torchscale(reference, config)
  return reference, kosmos.Kosmos(config), params


def test_full_forward_matches_torchscale(models):
  reference, model, params = models
  tokens = np.random.RandomState(0).randint(2, VOCAB, (2, 33))
  with torch.no_grad():
    expected = reference(torch.from_numpy(tokens))[0].numpy()
  got = np.asarray(jax.jit(model.apply)({"params": params}, tokens.astype(np.int32)))
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_incremental_decoding_matches_torchscale(models):
  reference, model, params = models
  batch, total, prompt = 2, 21, 9
  tokens = np.random.RandomState(1).randint(2, VOCAB, (batch, total))
  state = {"is_first_step": True}
  expected = []
  with torch.no_grad():
    expected.append(reference(torch.from_numpy(tokens[:, :prompt]), incremental_state=state)[0])
    state["is_first_step"] = False
    for t in range(prompt + 1, total + 1):      # torchscale takes the full prefix, uses the last
      expected.append(reference(torch.from_numpy(tokens[:, :t]), incremental_state=state)[0])
  expected = torch.cat(expected, dim=1).numpy()

  cache = kosmos.init_cache(model, batch, total)
  positions = np.broadcast_to(np.arange(total, dtype=np.int32), (batch, total))
  step = jax.jit(lambda c, tok, pos: model.apply({"params": params, "cache": c}, tok,
                                                 positions=pos, decode=True, mutable=["cache"]))
  run = lambda c, sl: step(c, tokens[:, sl].astype(np.int32), positions[:, sl])
  out, state_j = run(cache, slice(0, prompt))
  got = [np.asarray(out)]
  for t in range(prompt, total):
    out, state_j = run(state_j["cache"], slice(t, t + 1))
    got.append(np.asarray(out))
  np.testing.assert_allclose(np.concatenate(got, axis=1), expected, atol=1e-5, rtol=1e-5)
