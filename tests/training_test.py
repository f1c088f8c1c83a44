"""`ae_jax.training` end to end, beyond what tests/contract_test.py checks per stage.

The contract test fits each recipe's stages in a worker and checks resumption
after SIGKILL and SIGTERM (bitwise), the NaN stop and 2 devices against 1.
Here: every config's smoke preset through the launcher (`python -m
experiments.main`) with its directories and figures; configs rejected before
anything trains, naming the field; a finished run restored, never retrained;
the in-process SIGTERM handler given back after `fit`; the data thread of
`fit` (batches in order, the same run as stepping by hand, bitwise after a
resume; data errors raised on the training thread at their step; the thread
stopped and the data closed on every exit); and the launcher's exit status 75 on SIGTERM on 2 devices, then the
same run resumed on 1 device.
"""

import dataclasses
import glob
import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ae_jax import data
from ae_jax import recipes
from ae_jax import train
from ae_jax import training
from ae_jax.recipes import autoencoder as autoencoder_recipe
from ae_jax.recipes.base import Schedule
from ae_jax.recipes.base import Stage
from experiments.configs import denoising
from experiments.configs import undercomplete
from experiments.configs import vae
from experiments.main import EXIT_PREEMPTED

import _launch_helpers as helpers
from _tiny_objectives import deterministic_objective
from _tiny_objectives import IMAGE_SHAPE
from _tiny_objectives import MODEL

REPO = helpers.REPO
CONFIGS = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'experiments/configs/*.py'))
    if not os.path.basename(p).startswith(('_', 'common')))
# The figures of the recipes that draw through `recipes.common.write_figures`.
FIGURES = {
    'autoencoder': ('reconstructions.png', 'latent_map.png', 'training_curves.png'),
    'vae': ('reconstructions.png', 'latent_map.png', 'samples.png', 'training_curves.png'),
    'ladder': ('reconstructions.png', 'latent_map.png', 'samples.png', 'training_curves.png',
               'kl_per_layer.png'),
}
TIMEOUT_S = 600  # Guards against a hang, not a time limit: 2 shared cores can be slow.


def _smoke(name):
  return importlib.import_module(f'experiments.configs.{name}').get_config('smoke')


def _run(config_arg, workdir, *overrides):
  """The launcher in a subprocess on this machine's devices; (exit status, output)."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.pop('AE_JAX_FAULT', None)
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.main', f'--config={config_arg}',
       f'--workdir={workdir}', *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  return result.returncode, result.stdout + result.stderr


def _records(stage_dir):
  with open(stage_dir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def test_every_config_is_found_and_names_a_recipe():
  assert {'undercomplete', 'sparse_l1', 'sparse_kl', 'denoising', 'contractive', 'vae',
          'beta_vae', 'iwae', 'conv_ae', 'conv_vae', 'ladder_vae', 'vqvae', 'aae',
          'diffusion_ae', 'molecule_vae'} <= set(CONFIGS)
  for name in CONFIGS:
    assert _smoke(name).recipe in recipes.names(), name


@pytest.mark.integration
@pytest.mark.parametrize('name', CONFIGS)
def test_smoke_preset_runs_end_to_end_through_the_launcher(name, tmp_path):
  code, out = _run(f'experiments/configs/{name}.py:smoke', tmp_path)
  assert code == 0, out[-6000:]
  final = re.search(r'^Finished .* Final metrics: (.*)$', out, re.M)
  assert final, out[-6000:]
  assert not re.search(r'=(nan|inf|-inf)\b', final.group(1)), final.group(1)

  config = _smoke(name)
  trained = training.restore(config, str(tmp_path))
  assert list(trained) == list(recipes.get(config.recipe).stages(config))
  for stage_name, stage in trained.items():
    stage_dir = tmp_path / stage_name
    # Every stage's smoke schedule: 6 steps, checkpoints at 3 and 6 (the contract's faults).
    assert int(stage.state.step) == 6, stage_name
    assert sorted(os.listdir(stage_dir / 'checkpoints')) == ['3', '6'], stage_name
    records = _records(stage_dir)
    splits = {r['split'] for r in records}
    assert 'train' in splits and ('eval' in splits) == (stage.stage.eval_step is not None)
    for record in records:
      assert all(math.isfinite(v) for k, v in record.items() if k != 'split'), record
    assert glob.glob(str(stage_dir / 'tensorboard' / 'events.*')), stage_name
  sizes = {p.name: p.stat().st_size for p in (tmp_path / 'figures').glob('*.png')}
  assert sizes and min(sizes.values()) > 1000, sizes
  assert set(FIGURES.get(config.recipe, ())) <= set(sizes), sizes


def test_unknown_config_key_is_rejected_by_the_launcher(tmp_path):
  code, out = _run('experiments/configs/vae.py:smoke', tmp_path, '--config.loss.betta=2')
  assert code != 0
  assert 'betta' in out
  assert not (tmp_path / 'model').exists()


@pytest.mark.parametrize('module, field, value, message', [
    (vae, 'loss.beta', -1.0, 'beta must be >= 0, got -1.0'),
    (vae, 'model.latent_dim', 0, 'config.model.latent_dim must be > 0, got 0'),
    (vae, 'model.name', 'mlp_ae', "config.model.name='mlp_ae' is not a model of this recipe"),
    (vae, 'data.batch_size', 0, 'config.data.batch_size must be > 0, got 0'),
    (vae, 'train.num_train_steps', 0, 'config.train.num_train_steps must be > 0, got 0'),
    (vae, 'optim.learning_rate', -1.0, 'config.optim.learning_rate must be > 0, got -1.0'),
    (vae, 'optim.name', 'adagrad', "config.optim.name must be 'adam', 'adamw' or 'sgd', got "
                                   "'adagrad'"),
    (denoising, 'loss.objective', 'sparse', "config.loss.objective='sparse' is unknown"),
    (vae, 'recipe', 'vq_vae', "config.recipe='vq_vae' is unknown; expected one of"),
])
def test_invalid_values_are_rejected_before_training(module, field, value, message, tmp_path):
  config = module.get_config('smoke')
  section, _, key = field.rpartition('.')
  (config[section] if section else config)[key] = value
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=re.escape(message)):
    training.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_unknown_preset_and_a_config_without_recipe_are_rejected(tmp_path):
  with pytest.raises(ValueError, match=re.escape("Unknown preset 'huge'")):
    undercomplete.get_config('huge')
  config = undercomplete.get_config('smoke')
  with config.unlocked():
    del config['recipe']
  with pytest.raises(ValueError, match='no `recipe` field'):
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.integration
def test_a_finished_run_is_restored_not_retrained(tmp_path, monkeypatch, capsys):
  config = undercomplete.get_config('smoke')
  first = training.train_and_evaluate(config, str(tmp_path))
  stage_dir = tmp_path / 'model'
  records = (stage_dir / 'metrics.jsonl').read_text()
  checkpoints = sorted(os.listdir(stage_dir / 'checkpoints'))
  capsys.readouterr()

  traced = []
  make_stage = autoencoder_recipe.make_stage

  def counting_make_stage(config, name, trained):
    stage = make_stage(config, name, trained)

    def train_step(state, batch, key):
      traced.append(name)  # Runs when the loop traces the step, i.e. would train.
      return stage.train_step(state, batch, key)

    return dataclasses.replace(stage, train_step=train_step)

  monkeypatch.setattr(autoencoder_recipe, 'make_stage', counting_make_stage)
  again = training.train_and_evaluate(config, str(tmp_path))
  assert traced == []
  assert 'resumed from' not in capsys.readouterr().out
  # The restored final state, evaluated again on the same data, gives the same metrics.
  assert again == pytest.approx(first, rel=1e-6)
  assert (stage_dir / 'metrics.jsonl').read_text() == records
  assert sorted(os.listdir(stage_dir / 'checkpoints')) == checkpoints

  # train_or_restore trains nothing here either; with model_workdir it only reads that run.
  model, variables = training.train_or_restore(config, str(tmp_path))
  elsewhere = tmp_path / 'elsewhere'
  same_model, same_variables = training.train_or_restore(config, str(elsewhere),
                                                         model_workdir=str(tmp_path))
  assert traced == [] and not elsewhere.exists()
  assert model == same_model
  jax.tree.map(np.testing.assert_array_equal, variables, same_variables)
  restored = training.restore(config, str(tmp_path))['model']
  assert int(restored.state.step) == 6
  jax.tree.map(np.testing.assert_array_equal, variables, restored.variables)
  with pytest.raises(FileNotFoundError, match='No checkpoints in'):
    training.restore_variables(config, str(elsewhere))


def test_in_process_sigterm_stops_the_fit_and_the_previous_handler_is_given_back(tmp_path):
  config = undercomplete.get_config('smoke')
  calls = []
  previous = signal.signal(signal.SIGTERM, lambda *args: calls.append(args))
  try:
    with pytest.raises(training.Preempted, match='saved a checkpoint at step 4') as raised:
      training.train_and_evaluate(config, str(tmp_path), faults='sigterm@4')
    assert raised.value.step == 4
    assert raised.value.checkpoint_dir == str(tmp_path / 'model' / 'checkpoints')
    assert sorted(os.listdir(tmp_path / 'model' / 'checkpoints')) == ['3', '4']
    assert calls == []  # The loop's handler took the signal ...
    os.kill(os.getpid(), signal.SIGTERM)
    assert len(calls) == 1  # ... and gave the previous one back after the preempted fit,
    training.train_and_evaluate(config, str(tmp_path))
    os.kill(os.getpid(), signal.SIGTERM)
    assert len(calls) == 2  # and after a fit that finished.
  finally:
    signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------
# fit's data thread, on the tiny autoencoder of tests/_tiny_objectives.py.

_TINY_TX = optax.adam(1e-2)
_TINY_IMAGES = np.random.default_rng(0).uniform(size=(20, *IMAGE_SHAPE)).astype(np.float32)


class _TinyData:
  """`train_data` of the tiny stage: dynamically binarized batches of 4 (5 steps an
  epoch), noting each start step asked for and each iterator closed; the batch of
  step `fail_at` raises OSError."""

  def __init__(self, fail_at=None):
    self.fail_at = fail_at
    self.start_steps = []
    self.closed = 0

  def __call__(self, start_step):
    self.start_steps.append(start_step)
    batches = data.batches((_TINY_IMAGES,), batch_size=4, seed=1, binarize=True,
                           start_step=start_step)
    try:
      for step, batch in enumerate(batches, start_step + 1):
        if step == self.fail_at:
          raise OSError(f'could not read the batch of step {step}')
        yield batch
    finally:
      self.closed += 1


def _tiny_stage(train_data, num_steps=8):
  def init(key):
    return train.create_train_state(MODEL.init(key, jnp.zeros((1, *IMAGE_SHAPE))), _TINY_TX)

  return Stage(name='tiny', init=init, train_data=train_data,
               train_step=train.train_step_fn(deterministic_objective, _TINY_TX),
               schedule=Schedule(num_train_steps=num_steps, log_every_steps=2,
                                 eval_every_steps=100, checkpoint_every_steps=3,
                                 progress_bar=False))


def _data_threads():
  return [t for t in threading.enumerate() if t.name == 'ae_jax-prefetch']


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_fit_steps_through_the_stage_batches_in_order_and_resumes_bitwise(tmp_path):
  # By hand, the way fit stepped before it had a data thread: each batch taken
  # and placed on the training thread; keys as `Stage` documents them.
  stage = _tiny_stage(_TinyData())
  init_key, train_key, _ = jax.random.split(jax.random.key(stage.seed), 3)
  step_fn = jax.jit(stage.train_step, donate_argnums=(0,))
  by_hand = [jax.jit(stage.init)(init_key)]
  for _, batch in zip(range(8), stage.train_data(0)):
    state, _ = step_fn(by_hand[-1], jax.tree.map(jnp.asarray, batch), train_key)
    by_hand.append(jax.device_get(state))

  uninterrupted = training.fit(stage, str(tmp_path / 'a'), faults='')
  assert int(uninterrupted.state.step) == 8
  _assert_trees_equal(uninterrupted.state, by_hand[8])

  resumed_data = _TinyData()
  resumed_stage = _tiny_stage(resumed_data)
  with pytest.raises(training.Preempted, match='at step 5'):
    training.fit(resumed_stage, str(tmp_path / 'b'), faults='sigterm@5')
  _, at_5 = helpers.restore(tmp_path / 'b', 5)
  np.testing.assert_array_equal(at_5['step'], 5)
  resumed = training.fit(resumed_stage, str(tmp_path / 'b'), faults='')
  assert resumed_data.start_steps == [0, 5]
  _assert_trees_equal(resumed.state, by_hand[8])
  # The comparison means something: the batches moved the parameters.
  assert helpers.max_abs_diff(by_hand[8].params, by_hand[5].params) > 1e-4
  assert resumed_data.closed == 2 and not _data_threads()


def test_a_data_error_is_raised_by_fit_at_its_step_and_the_thread_stops(tmp_path):
  train_data = _TinyData(fail_at=5)
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(OSError, match='could not read the batch of step 5'):
    training.fit(_tiny_stage(train_data), str(tmp_path), faults='')
  # Raised when step 5 needed it, not when the thread met it ahead of the
  # loop: steps 1-4 ran and the checkpoint at 3 was saved.
  assert training.checkpoint.latest_step(str(tmp_path)) == 3
  assert train_data.closed == 1 and not _data_threads()
  assert signal.getsignal(signal.SIGTERM) is previous


def test_an_error_on_the_training_thread_stops_the_data_thread(tmp_path):
  train_data = _TinyData()
  with pytest.raises(training.TrainingDivergedError, match='diverged at step 4'):
    training.fit(_tiny_stage(train_data), str(tmp_path), faults='nan@4')
  assert train_data.closed == 1 and not _data_threads()


# Same global batch and keys on 1 and 2 devices; only the gradient all-reduce's
# summation order differs: float32 rounding.
PARAMS_ATOL = 1e-5


@pytest.mark.integration
def test_two_device_run_exits_75_on_sigterm_and_resumes_on_one_device(tmp_path):
  # The VAE draws noise in the step: the replicated key must give the same draws.
  config_arg = 'experiments/configs/vae.py:smoke'
  nine = '--config.train.num_train_steps=9'

  def body(root):
    root.mkdir()
    one, two = root / 'one', root / 'two'
    (code, out), = helpers.wait([helpers.launch(config_arg, one, nine)], TIMEOUT_S)
    assert code == 0, out
    (code, out_two), = helpers.wait(
        [helpers.launch(config_arg, two, num_devices=2, fault='sigterm@4')], TIMEOUT_S)
    return one, two, code, out_two

  one, two, code, out_two = helpers.with_one_retry(body, tmp_path)
  assert "Devices: 2 x cpu in 1 process(es); recipe 'vae'" in out_two
  assert code == EXIT_PREEMPTED == 75, out_two
  assert (f'Preempted: saved a checkpoint at step 4 in {two}/model/checkpoints; run the same '
          'command again to resume from it.') in out_two
  assert 'Final metrics' not in out_two and not (two / 'figures').exists()

  # The 2-device checkpoint resumes on 1 device and ends like the 1-device run.
  (code, out), = helpers.wait(
      [helpers.launch(config_arg, two, nine, log_path=f'{two}.resume.log')], TIMEOUT_S)
  assert code == 0, out
  assert "Devices: 1 x cpu in 1 process(es); recipe 'vae'" in out
  assert f'model: resumed from {two}/model/checkpoints at step 4.' in out
  _, at_3_one = helpers.restore(one / 'model', 3)
  step, at_9_two = helpers.restore(two / 'model')
  assert step == 9
  _, at_9_one = helpers.restore(one / 'model', 9)
  diff = helpers.max_abs_diff(at_9_two['params'], at_9_one['params'])
  print(f'step 9: max |params(2 then 1 devices) - params(1 device)| = {diff:.3g}')
  assert diff <= PARAMS_ATOL
  assert helpers.max_abs_diff(at_9_two['opt_state'], at_9_one['opt_state']) <= PARAMS_ATOL
  # The comparison means something only if training moved the parameters.
  assert helpers.max_abs_diff(at_9_one['params'], at_3_one['params']) > 100 * PARAMS_ATOL
