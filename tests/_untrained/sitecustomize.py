"""Loaded by every Python subprocess a test starts under `pytest --untrained`."""

import os

if os.environ.get('AE_JAX_TEST_UNTRAINED') == '1':
  import _no_updates
  _no_updates.install()
