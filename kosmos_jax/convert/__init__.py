"""Weight conversion between kosmos-jax and Hugging Face.

  hf_kosmos2      Kosmos2ForConditionalGeneration <-> our params/config; CLI; `from_pretrained`
  hf_clip         CLIP vision tower -> our image encoder (the Kosmos-1 init)
  pretrained      the HF-shaped front end returned by `hf_kosmos2.from_pretrained`
  mapping         tensor layout rules (PyTorch <-> Flax) and one-shot error reporting
  safetensors_io  reading/writing HF weight files with numpy (pickles only when allowed)
"""
