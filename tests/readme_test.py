"""Every ```python block of README.md runs, in order, in one namespace, as written.

The blocks run in a fresh interpreter (a subprocess, from the repository root,
on one CPU device), so nothing of the test session leaks into them. A block
that is not Python (a shell command, a Colab cell with `!` lines) has another
fence; `test_readme_has_python_blocks` guards against fencing them all away.
"""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCK = re.compile(r'^```python\n(.*?)^```$', re.S | re.M)


def _python_blocks() -> list[str]:
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    return _BLOCK.findall(f.read())


def test_readme_has_python_blocks():
  blocks = _python_blocks()
  assert len(blocks) >= 2
  assert any('make_train_step' in b for b in blocks)


def test_every_readme_python_block_runs_in_order():
  blocks = _python_blocks()
  # One script; a marker after each block says how far it got.
  script = '\n'.join(f'{block}\nprint("README block {i} ok", flush=True)\n'
                     for i, block in enumerate(blocks))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  for i in range(len(blocks)):
    assert f'README block {i} ok' in result.stdout
  # The library example trained three steps (it prints the step and the loss).
  assert re.search(r'^3 \d+\.\d+', result.stdout, re.M), result.stdout
