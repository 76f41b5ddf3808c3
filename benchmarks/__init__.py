"""Side-by-side benchmarks against the Hugging Face PyTorch reference (`python -m benchmarks.run`).

A regular package, so that `benchmarks.*` resolves here and not to an installed top-level
`benchmarks` package (fairscale ships one).
"""
