"""Fixtures for the conversion tests: tiny random Hugging Face Kosmos-2 / CLIP models saved with
`save_pretrained` to temporary directories (no hub access), and HF-style input batches."""
import numpy as np
import pytest
import torch
import transformers

# Three tiny Kosmos-2 configs that differ in depth, heads, latents, image size, activation,
# embedding tying/scaling and padding side.
KOSMOS2_CONFIGS = {
    "a": dict(text=dict(vocab_size=1000, embed_dim=64, layers=2, attention_heads=4, ffn_dim=128),
              vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, image_size=28, patch_size=14),
              latents=8, padding="right", scan_layers=True),
    "b": dict(text=dict(vocab_size=500, embed_dim=48, layers=3, attention_heads=6, ffn_dim=96),
              vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                          num_attention_heads=3, image_size=42, patch_size=14),
              latents=4, padding="left", scan_layers=False),
    "c": dict(text=dict(vocab_size=300, embed_dim=32, layers=1, attention_heads=2, ffn_dim=64,
                        scale_embedding=False),
              vision=dict(hidden_size=16, intermediate_size=48, num_hidden_layers=3,
                          num_attention_heads=2, image_size=16, patch_size=8, hidden_act="gelu"),
              latents=6, padding="left", scan_layers=True, tie_word_embeddings=False),
}


def randomize_(model: torch.nn.Module, seed: int) -> None:
  """Re-draws every weight so that greedy decoding of the random model does not just repeat one
  token (HF's 0.02-std init with tied embeddings does): matrices N(0, 2/sqrt(fan_in)), token
  embeddings N(0, 0.05), LayerNorm gains N(1, 0.3), other vectors N(0, 0.1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "embed_tokens" in name:
        p.copy_(0.05 * noise)
      elif p.ndim >= 2:
        p.copy_(2.0 * noise / p[0].numel() ** 0.5)
      elif name.endswith("weight"):            # LayerNorm gains
        p.copy_(1.0 + 0.3 * noise)
      else:
        p.copy_(0.1 * noise)


def build_kosmos2(name: str, directory: str) -> torch.nn.Module:
  spec = KOSMOS2_CONFIGS[name]
  config = transformers.Kosmos2Config(
      text_config=dict(spec["text"], max_position_embeddings=128,
                       tie_word_embeddings=spec.get("tie_word_embeddings", True)),
      vision_config=spec["vision"], latent_query_num=spec["latents"],
      tie_word_embeddings=spec.get("tie_word_embeddings", True))
  torch.manual_seed(0)
  model = transformers.Kosmos2ForConditionalGeneration(config)
  randomize_(model, seed=sum(map(ord, name)))
  model.eval()
  model.save_pretrained(directory)
  return model


def make_batch(name: str, batch: int = 2, length: int = 20, seed: int = 0) -> dict:
  """input_ids/attention_mask/image_embeds_position_mask/pixel_values as numpy.

  Row i has 3*i pads on the config's padding side; a prompt is <s> <image> [latents] </image>
  text, token ids avoid the pad id 1 (HF gives pad ids a zero position embedding even when
  attended), and pad slots hold the pad id as HF expects.
  """
  spec = KOSMOS2_CONFIGS[name]
  rng = np.random.RandomState(seed)
  q, vocab, size = spec["latents"], spec["text"]["vocab_size"], spec["vision"]["image_size"]
  ids = np.ones((batch, length), np.int64)
  mask = np.zeros((batch, length), np.int64)
  slots = np.zeros((batch, length), np.int64)
  for row in range(batch):
    real = length - 3 * row
    start = length - real if spec["padding"] == "left" else 0
    tokens = rng.randint(3, vocab, real)
    tokens[0] = 0                                   # <s>
    ids[row, start:start + real] = tokens
    mask[row, start:start + real] = 1
    slots[row, start + 2:start + 2 + q] = 1
  pixels = rng.randn(batch, 3, size, size).astype(np.float32)
  return dict(input_ids=ids, attention_mask=mask, image_embeds_position_mask=slots,
              pixel_values=pixels)


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory):
  """name -> (HF model in eval mode, its save_pretrained directory); built once per session."""
  cache = {}

  def get(name: str):
    if name not in cache:
      directory = str(tmp_path_factory.mktemp(f"hf_kosmos2_{name}"))
      cache[name] = (build_kosmos2(name, directory), directory)
    return cache[name]
  return get


@pytest.fixture(scope="session")
def kosmos2_batch():
  return make_batch


def hf_logits(model: torch.nn.Module, batch: dict) -> np.ndarray:
  with torch.no_grad():
    out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
  return out.logits.numpy()


@pytest.fixture(scope="session")
def hf_forward():
  return hf_logits


def state_dict_numpy(model: torch.nn.Module) -> dict:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def hf_state_dict():
  return state_dict_numpy


@pytest.fixture(scope="session")
def kosmos2_specs():
  return KOSMOS2_CONFIGS


@pytest.fixture(scope="session")
def randomize():
  return randomize_
