"""Config checks (`ae_jax.training.validate`), the launcher's one-line errors,
the config kept in the workdir and compared on resume, and SIGTERM at startup.

Every rule of `ae_jax.recipes.common.check_config` and of the recipes' own
unused-field checks has a case below with the bad value; the error must name
the field and the value. The launcher cases run `python -m experiments.main`
in a subprocess: a usage or config error is one 'error: ...' line on stderr and
status 2, and AE_JAX_TRACEBACK=1 adds the traceback.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest

from ae_jax import training
from ae_jax.recipes import common
from ae_jax.training import run as run_lib
from experiments import cli
from experiments.configs import aae as aae_config
from experiments.configs import beta_vae
from experiments.configs import common as configs_common
from experiments.configs import contractive
from experiments.configs import diffusion_ae
from experiments.configs import ladder_vae
from experiments.configs import sparse_kl
from experiments.configs import undercomplete
from experiments.configs import vae
from experiments.configs import vqvae

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
CONFIG_MODULES = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'experiments/configs/*.py'))
    if os.path.basename(p) not in ('__init__.py', 'common.py'))


def _set(config, field, value):
  *parents, name = field.split('.')
  node = config
  for parent in parents:
    node = node[parent]
  with config.unlocked():
    node[name] = value
  return config


def _rejects(config, match):
  with pytest.raises(ValueError, match=match):
    training.validate(config)


# ----------------------------------------------------------------------------
# Every shipped config and preset still validates.


@pytest.mark.parametrize('name', CONFIG_MODULES)
def test_every_shipped_config_and_preset_validates(name):
  module = importlib.import_module(f'experiments.configs.{name}')
  for preset in configs_common.PRESETS:
    training.validate(module.get_config(preset))


# ----------------------------------------------------------------------------
# Numbers: finite everywhere, in range where a rule names the field.


@pytest.mark.parametrize('field, value', [
    ('optim.learning_rate', float('nan')),
    ('optim.learning_rate', float('inf')),
    ('loss.beta', float('nan')),
    ('loss.beta', float('-inf')),
    ('optim.grad_clip_norm', float('inf')),
    ('optim.weight_decay', float('nan')),
    ('optim.momentum', float('nan')),
])
def test_non_finite_numbers_are_rejected_by_name(field, value):
  _rejects(_set(vae.get_config('smoke'), field, value),
           rf'config\.{re.escape(field)} must be finite, got {value!r}')


def test_a_non_finite_number_in_a_tuple_or_a_nested_section_is_rejected():
  _rejects(_set(aae_config.get_config('smoke'), 'loss.mmd_bandwidths', (1.0, float('nan'))),
           r'config\.loss\.mmd_bandwidths must be finite, got \(1\.0, nan\)')
  _rejects(_set(diffusion_ae.get_config('smoke'), 'diffusion.latent.learning_rate',
                float('inf')), r'config\.diffusion\.latent\.learning_rate must be finite')
  # A field no rule names is still checked to be finite.
  config = vae.get_config('smoke')
  with config.unlocked():
    config.extra = {'scale': float('nan')}
  _rejects(config, r'config\.extra\.scale must be finite, got nan')


@pytest.mark.parametrize('module, field, value, allowed', [
    (vae, 'optim.grad_clip_norm', -1.0, r'> 0 \(or 0/None for no clipping\)'),
    (vae, 'optim.learning_rate', 0.0, '> 0'),
    (vae, 'optim.weight_decay', -1e-4, '>= 0'),
    (vae, 'optim.momentum', 1.0, r'in \[0, 1\)'),
    (vae, 'loss.beta', -1.0, '>= 0'),
    (beta_vae, 'loss.capacity_max', -1.0, r'>= 0 \(or None for off\)'),
    (beta_vae, 'loss.gamma', -5.0, '>= 0'),
    (vae, 'loss.warmup_steps', -1, '>= 0'),
    (vae, 'loss.num_samples', 0, '> 0'),
    (ladder_vae, 'loss.free_bits', -0.5, '>= 0'),
    (sparse_kl, 'loss.rho', 0.0, r'in \(0, 1\)'),
    (sparse_kl, 'loss.rho', 1.5, r'in \(0, 1\)'),
    (sparse_kl, 'loss.kl_sparsity_weight', -3.0, '>= 0'),
    (contractive, 'loss.weight', -0.1, '>= 0'),
    (importlib.import_module('experiments.configs.denoising'), 'loss.noise_level', 1.5,
     r'in \[0, 1\]'),
    (vqvae, 'loss.commitment_cost', -0.25, '>= 0'),
    (vqvae, 'model.decay', 1.0, r'in \[0, 1\)'),
    (aae_config, 'loss.prior_radial_std', 0.0, '> 0'),
    (aae_config, 'disc_optim.learning_rate', -1.0, '> 0'),
    (aae_config, 'model.num_classes', -1, '>= 0'),
    (vae, 'model.latent_dim', 0, '> 0'),
    (vae, 'model.hidden', (400, 0), '> 0'),
    (vae, 'data.batch_size', 0, '> 0'),
    (vae, 'data.eval_batch_size', -32, '> 0'),
    (vae, 'data.shuffle_seed', -1, '>= 0'),
    (vae, 'train.seed', -1, '>= 0'),
    (vae, 'train.num_train_steps', 0, '> 0'),
    (vae, 'train.log_every_steps', 0, '> 0'),
    (vae, 'train.eval_every_steps', -3, '> 0'),
    (vae, 'train.checkpoint_every_steps', 0, '> 0'),
    (vae, 'train.keep_checkpoints', 0, '> 0'),
    (vae, 'train.num_eval_batches', 0, r'> 0 \(or None for all\)'),
    (vae, 'train.num_figure_examples', 0, '> 0'),
    (vae, 'optim.warmup_steps', -1, '>= 0'),
    (diffusion_ae, 'optim.decay_steps', -1, '>= 0'),
    (diffusion_ae, 'diffusion.latent.num_train_steps', -1, r'>= 0 \(0: no latent DDPM\)'),
    (diffusion_ae, 'diffusion.latent.batch_size', 0, '> 0'),
    (diffusion_ae, 'model.num_timesteps', 0, '> 0'),
])
def test_out_of_range_numbers_name_the_field_the_value_and_what_is_allowed(
    module, field, value, allowed):
  config = _set(module.get_config('smoke'), field, value)
  _rejects(config, rf'config\.{re.escape(field)} must be {allowed}, got {re.escape(repr(value))}')


def test_counts_must_be_integers():
  # ml_collections refuses a float for an int field; a config built another way may not.
  with pytest.raises(ValueError, match=r'config\.train\.num_eval_batches must be an integer > 0'):
    common.check_numbers({'train': {'num_eval_batches': 1.5}})
  config = vae.get_config('smoke')
  config.data.batch_size = True
  _rejects(config, r'config\.data\.batch_size must be an integer > 0, got True')


def test_grad_clip_norm_zero_or_none_means_no_clipping():
  for value in (0.0, None):
    config = vae.get_config('smoke')
    with config.unlocked():
      config.optim.grad_clip_norm = value
    training.validate(config)


# ----------------------------------------------------------------------------
# Fields without effect for the chosen data, optimizer or objective.


@pytest.mark.parametrize('module, field, value, match', [
    (vae, 'optim.momentum', 0.5, r"config\.optim\.momentum=0\.5 has no effect: only "
                                 r"config\.optim\.name='sgd' reads it.*leave it at 0\.9"),
    (vae, 'optim.weight_decay', 0.01, r"config\.optim\.weight_decay=0\.01 has no effect: only "
                                      r"config\.optim\.name='adamw'"),
    (vae, 'loss.gamma', 10.0, r'config\.loss\.gamma=10\.0 has no effect: only the capacity '
                              r'objective'),
    (beta_vae, 'loss.capacity_steps', 100, r'config\.loss\.capacity_steps=100 has no effect'),
    (importlib.import_module('experiments.configs.iwae'), 'loss.gamma', 10.0,
     r"config\.loss\.gamma=10\.0 has no effect: objective='iwae'"),
    (contractive, 'loss.num_probes', 4, r"config\.loss\.num_probes=4 has no effect: only "
                                        r"mode='estimate'"),
    (undercomplete, 'loss.output_activation', 'identity',
     r"config\.loss\.output_activation='identity' has no effect: reconstruction='bernoulli'"),
    (aae_config, 'loss.prior_radius', 2.0, r"config\.loss\.prior_radius=2\.0 has no effect: "
                                           r"only prior='mixture'"),
    (vae, 'data.data_dir', '/tmp/data', r"config\.data\.data_dir='/tmp/data' has no effect: "
                                        r"'mnist5k' is built in"),
])
def test_fields_without_effect_are_rejected(module, field, value, match):
  _rejects(_set(module.get_config('smoke'), field, value), match)


def test_more_unused_fields():
  config = sparse_kl.get_config('smoke')
  config.loss.kl_sparsity_weight, config.loss.rho = 0.0, 0.1
  _rejects(config, r'config\.loss\.rho=0\.1 has no effect: only the KL sparsity penalty')
  config = ladder_vae.get_config('smoke')
  with config.unlocked():
    config.loss.objective, config.loss.num_samples, config.loss.active_threshold = 'iwae', 2, 0.5
  _rejects(config, r"config\.loss\.active_threshold=0\.5 has no effect: objective='iwae'")
  config = beta_vae.get_config('smoke')  # The capacity objective replaces β and its warm-up.
  with config.unlocked():
    config.loss.capacity_max = 25.0
  _rejects(config, r'config\.loss\.beta=4\.0 has no effect: the capacity objective')
  config = vqvae.get_config('smoke')
  with config.unlocked():
    config.model.ema, config.model.decay = False, 0.9
  _rejects(config, r'config\.model\.decay=0\.9 has no effect: only the EMA codebook')
  config = vae.get_config('smoke')
  with config.unlocked():
    config.data.name, config.data.binarize = 'shapes', True
    config.model.name = 'mlp_vae'
  _rejects(config, r"config\.data\.binarize=True has no effect: the images of 'shapes' are "
                   r'0/1 already')


def test_molecule_sizes_and_fields_are_checked():
  molecule_vae = importlib.import_module('experiments.configs.molecule_vae')
  _rejects(_set(molecule_vae.get_config('smoke'), 'data.batch_size', 400),
           r'config\.data\.batch_size=400 is larger than config\.data\.num_train_molecules=300')
  _rejects(_set(molecule_vae.get_config('smoke'), 'train.num_eval_batches', 3),
           r'config\.train\.num_eval_batches=3 is more than the 2 batch\(es\)')
  _rejects(_set(molecule_vae.get_config('smoke'), 'data.data_dir', '/tmp/moses'),
           r"config\.data\.data_dir='/tmp/moses' has no effect: the MOSES splits")


def test_the_documented_capacity_command_validates():
  config = beta_vae.get_config('smoke')
  with config.unlocked():
    config.loss.update(dict(capacity_max=25.0, capacity_steps=2000, gamma=100.0, beta=1.0,
                            warmup_steps=0))
  training.validate(config)


def test_cosine_schedule_needs_decay_steps():
  config = vae.get_config('smoke')
  with config.unlocked():
    config.optim.schedule, config.optim.warmup_steps, config.optim.decay_steps = 'cosine', 4, 2
  _rejects(config, r'config\.optim\.decay_steps must be > 0 and >= config\.optim\.warmup_steps=4'
                   r" with schedule='cosine'.*got 2")


# ----------------------------------------------------------------------------
# Degenerate sizes: errors where the run cannot do what the config says,
# warnings where it only does less.


def test_sizes_larger_than_the_data_are_rejected():
  _rejects(_set(vae.get_config('smoke'), 'data.batch_size', 8000),
           r"config\.data\.batch_size=8000 is larger than the 4000 examples of the 'train' "
           r"split of 'mnist5k'; it must be at most 4000")
  _rejects(_set(vae.get_config('smoke'), 'train.num_eval_batches', 40),
           r'config\.train\.num_eval_batches=40 is more than the 32 batch\(es\) of '
           r'config\.data\.eval_batch_size=32')
  _rejects(_set(vae.get_config('smoke'), 'train.num_figure_examples', 2000),
           r'config\.train\.num_figure_examples=2000 is more than the 1000 examples')
  _rejects(_set(vae.get_config('smoke'), 'data.eval_split', 'validation'),
           r"config\.data\.eval_split='validation': Dataset 'mnist5k' has splits")
  _rejects(_set(vae.get_config('smoke'), 'data.name', 'mnist6k'),
           r"config\.data\.name='mnist6k' is not a dataset of ae_jax\.data")


def test_degenerate_schedules_warn_once_each_and_name_the_field():
  config = vae.get_config('smoke')
  with config.unlocked():
    config.train.num_train_steps = 2  # Smoke evaluates and checkpoints every 3 steps.
    config.optim.warmup_steps = 5  # A constant schedule has no warm-up.
  with pytest.warns(training.ConfigWarning) as record:
    training.validate(config)
  messages = [str(w.message) for w in record]
  assert any('config.train.eval_every_steps=3 > config.train.num_train_steps=2' in m
             for m in messages), messages
  assert any('config.train.checkpoint_every_steps=3' in m for m in messages), messages
  assert any("warmup_steps=5 have no effect with schedule='constant'" in m
             for m in messages), messages


def test_an_overcomplete_plain_autoencoder_warns():
  config = _set(undercomplete.get_config('smoke'), 'model.latent_dim', 1000)
  with pytest.warns(training.ConfigWarning, match=r'config\.model\.latent_dim=1000 >= the 784'):
    training.validate(config)
  with warnings.catch_warnings():
    warnings.simplefilter('error', training.ConfigWarning)
    training.validate(undercomplete.get_config('smoke'))


# ----------------------------------------------------------------------------
# The config in the workdir: written at the first start, compared on resume.


def test_config_changes_are_split_into_resumable_and_refused():
  old = json.loads(json.dumps(vae.get_config('smoke').to_dict()))
  config = vae.get_config('smoke')
  config.train.num_train_steps = 12
  config.optim.learning_rate = 3e-4
  config.model.latent_dim = 4
  config.train.seed = 1
  config.optim.grad_clip_norm = 1.0  # Off -> on changes the optimizer state.
  resumable, refused = run_lib.config_changes(old, config)
  assert resumable == ['optim.learning_rate: 0.001 -> 0.0003',
                       'train.num_train_steps: 6 -> 12'], resumable
  assert refused == ['model.latent_dim: 20 -> 4', 'optim.grad_clip_norm: 0.0 -> 1.0',
                     'train.seed: 0 -> 1'], refused
  assert run_lib.config_changes(old, vae.get_config('smoke')) == ([], [])


def test_check_resume_writes_warns_and_refuses(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  stages = ('model',)
  run_lib.check_resume(vae.get_config('smoke'), workdir, stages)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['latent_dim'] == 20 and saved['recipe'] == 'vae'
  assert not [p for p in os.listdir(tmp_path) if p != 'config.json']  # No temporary left.
  # No checkpoint yet: a changed config simply replaces it.
  run_lib.check_resume(_set(vae.get_config('smoke'), 'model.latent_dim', 8), workdir, stages)
  assert json.loads((tmp_path / 'config.json').read_text())['model']['latent_dim'] == 8
  monkeypatch.setattr(run_lib, '_has_checkpoint', lambda workdir, names: True)
  with pytest.raises(training.ConfigMismatchError,
                     match=r'model\.latent_dim: 8 -> 20.*Use a new --workdir'):
    run_lib.check_resume(vae.get_config('smoke'), workdir, stages)
  config = _set(vae.get_config('smoke'), 'model.latent_dim', 8)
  config.train.num_train_steps = 9
  with pytest.warns(training.ConfigWarning,
                    match=r'resuming .* with changed fields \(the checkpoints still fit\): '
                          r'train\.num_train_steps: 6 -> 9'):
    run_lib.check_resume(config, workdir, stages)
  assert json.loads((tmp_path / 'config.json').read_text())['train']['num_train_steps'] == 9
  with pytest.raises(training.ConfigMismatchError, match=r'recipe or model.*latent_dim: 8 -> 20'):
    training.restore(vae.get_config('smoke'), workdir)


# ----------------------------------------------------------------------------
# The launcher.


def _env(**extra):
  env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  env.pop('AE_JAX_FAULT', None)
  env.pop(cli.TRACEBACK_ENV, None)
  env.update(extra)
  return env


def _launch(workdir, *args, env=None, config='experiments/configs/vae.py:smoke'):
  cmd = [sys.executable, '-m', 'experiments.main', f'--config={config}', f'--workdir={workdir}',
         *args]
  return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True,
                        timeout=TIMEOUT_S, check=False)


def _error_line(result):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == cli.EXIT_USAGE, (result.returncode, result.stderr)
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  return lines[0]


def test_launcher_config_errors_are_one_line_and_status_2(tmp_path):
  workdir = tmp_path / 'run'
  line = _error_line(_launch(workdir, '--config.optim.grad_clip_norm=-1.0'))
  assert line == ('error: config.optim.grad_clip_norm must be > 0 (or 0/None for no clipping), '
                  'got -1.0.')
  line = _error_line(_launch(workdir, '--config.loss.betta=2'))
  assert line == ('error: --config.loss.betta: no such field; closest: config.loss.beta, '
                  'config.loss.objective')
  assert '\\n' not in line
  line = _error_line(_launch(workdir, config='experiments/configs/vae.py:smok'))
  assert line.startswith("error: --config=experiments/configs/vae.py:smok: Unknown preset 'smok'")
  assert not workdir.exists()


def test_launcher_traceback_on_request(tmp_path):
  result = _launch(tmp_path / 'run', '--config.optim.learning_rate=nan',
                   env=_env(**{cli.TRACEBACK_ENV: '1'}))
  assert result.returncode == cli.EXIT_USAGE, result.stderr
  assert 'Traceback (most recent call last)' in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'error: config.optim.learning_rate must be finite, got nan.')


def test_unknown_field_message_names_the_closest_fields():
  config = vae.get_config('smoke')
  assert cli.unknown_field(config, 'loss.beta') is None
  assert cli.unknown_field(config, 'optim.grad_clip') == (
      'no such field; closest: config.optim.grad_clip_norm')
  assert cli.unknown_field(config, 'model.xxxxxxxxxxxxxxxx').startswith(
      'no such field; the section has hidden, latent_dim, name')


_SLOW_START = textwrap.dedent('''
    import sys, time
    from ae_jax import training

    def slow_start(config, workdir, **kwargs):  # Stands for decoding a large dataset.
      print('STARTED', flush=True)
      # Short calls, as decoding makes: Python runs a signal handler between
      # bytecodes, and when the kernel hands the signal to another thread (XLA's)
      # one long C call (sleep(120)) would hold it back until it returns.
      for _ in range(1200):
        time.sleep(0.1)

    training.train_and_evaluate = slow_start
    from experiments import main
    sys.argv = ['experiments.main', '--config=experiments/configs/vae.py:smoke',
                '--workdir=' + sys.argv[1]]
    main.run()
''')


def test_sigterm_before_the_training_loop_exits_75(tmp_path):
  proc = subprocess.Popen([sys.executable, '-c', _SLOW_START, str(tmp_path / 'run')], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == 'STARTED'
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == cli.EXIT_PREEMPTED, err
  assert 'SIGTERM outside the training loop' in err


@pytest.mark.integration
def test_sigterm_while_the_launcher_starts_exits_75(tmp_path):
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.main', '--config=experiments/configs/vae.py:smoke',
       f'--workdir={tmp_path / "run"}'], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL, text=True)
  try:
    # The first line comes once the config is checked; the loop's handler is not
    # installed yet (or, on a fast machine, it is: it exits with 75 too).
    assert proc.stdout.readline().startswith('Devices:')
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=TIMEOUT_S)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == cli.EXIT_PREEMPTED


@pytest.mark.integration
def test_resume_warns_about_schedule_changes_and_refuses_model_changes(tmp_path):
  workdir = tmp_path / 'run'
  first = _launch(workdir, '--config.train.num_train_steps=3')
  assert first.returncode == 0, first.stderr
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['train']['num_train_steps'] == 3
  refused = _launch(workdir, '--config.model.latent_dim=4', '--config.train.seed=1')
  line = _error_line(refused)
  assert 'model.latent_dim: 20 -> 4; train.seed: 0 -> 1' in line, line
  resumed = _launch(workdir, '--config.train.num_train_steps=4',
                    '--config.train.checkpoint_every_steps=4')
  assert resumed.returncode == 0, resumed.stderr
  warning = [line for line in resumed.stderr.splitlines() if line.startswith('warning: ')]
  assert len(warning) == 1, resumed.stderr
  assert ('train.checkpoint_every_steps: 3 -> 4; train.num_train_steps: 3 -> 4'
          in warning[0]), warning
  assert 'resumed from' in resumed.stdout and 'at step 3' in resumed.stdout, resumed.stdout
  assert json.loads((workdir / 'config.json').read_text())['train']['num_train_steps'] == 4
