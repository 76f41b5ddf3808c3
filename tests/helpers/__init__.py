"""Helpers shared by the tests (tiny configs, random batches)."""
