"""The package itself never imports torch or transformers (they are test/benchmark references)."""
import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import kosmos_jax
names = [m.name for m in pkgutil.walk_packages(kosmos_jax.__path__, 'kosmos_jax.')]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in ('torch', 'transformers', 'torchscale') if m in sys.modules)
print(len(names), 'modules;', 'leaked:', leaked)
sys.exit(1 if leaked else 0)
"""


def test_importing_every_module_pulls_in_no_torch_or_transformers():
  out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr[-3000:]
  assert int(out.stdout.split()[0]) > 40
