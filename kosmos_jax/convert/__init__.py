"""Weight conversion between kosmos-jax and Hugging Face (the HF-shaped Python API over the
result is `kosmos_jax.inference.hf_compat`).

  hf_kosmos2      Kosmos2ForConditionalGeneration <-> our params/config; the conversion CLI
  hf_clip         CLIP vision tower -> our image encoder (the Kosmos-1 init)
  mapping         tensor layout rules (PyTorch <-> Flax) and one-shot error reporting
  safetensors_io  reading/writing HF weight files with numpy (pickles only when allowed)
"""
