"""Options shared by every test tier.

`pytest -m learning --untrained` (`make test-untrained`) runs every test that
claims learning with parameter updates switched off: `optax.apply_updates`
returns the parameters unchanged, in the test process and in every Python
subprocess it starts (launcher runs, notebook kernels). Each such test is then
expected to fail an assertion (strict xfail, `raises=AssertionError`): one that
still passes with an untrained model proves nothing, and the run reports it as
failed, as it does a test that crashes instead.
"""

import os
import socket
import sys

import pytest

_PATCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_untrained')


def pytest_addoption(parser):
  parser.addoption(
      '--untrained', action='store_true', default=False,
      help='run the tests marked `learning` with no parameter updates; each must fail')


def pytest_configure(config):
  if not config.getoption('untrained'):
    return
  os.environ['AE_JAX_TEST_UNTRAINED'] = '1'
  os.environ['PYTHONPATH'] = os.pathsep.join(
      filter(None, [_PATCH_DIR, os.environ.get('PYTHONPATH')]))
  sys.path.insert(0, _PATCH_DIR)
  import _no_updates  # pylint: disable=import-outside-toplevel
  _no_updates.install()


def pytest_collection_modifyitems(config, items):
  if not config.getoption('untrained'):
    return
  keep, drop = [], []
  for item in items:
    (keep if item.get_closest_marker('learning') else drop).append(item)
  if drop:
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
  for item in keep:
    # Only an assertion counts as the expected failure: a crash is reported.
    item.add_marker(pytest.mark.xfail(
        strict=True, raises=AssertionError,
        reason='claims learning: must fail its assertions when nothing is trained'))


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a connection fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args}')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
