"""The subprocess side of tests/contract_test.py: fits a config's stages with `training.fit`.

  python tests/_contract_worker.py chain CONFIG_ARG WORKDIR OUT_PICKLE
  python tests/_contract_worker.py reference CONFIG_ARG WORKDIR OUT_PICKLE STAGE

Both run with 2 fake CPU devices and the same XLA flags, so their one-device
programs are the same programs and their results compare bitwise.

`chain` fits every stage on one device into WORKDIR, exactly as
`training.train_and_evaluate` does but without the recipe's figures
(tests/training_test.py runs every smoke preset through the launcher); faults
come from AE_JAX_FAULT. Exit status 75 after a preemption, as the launcher.

`reference` fits every stage on one device into WORKDIR/reference; then, for
STAGE (earlier stages copied from the reference, so restored, not retrained),
injects a NaN at a non-checkpoint step c + 2 and, resuming, at the checkpoint
step 2c (c = the stage's checkpoint interval) into WORKDIR/diverged, recording
each error and the latest checkpoint after it; then fits STAGE and the stages
after it on both devices into WORKDIR/two.

OUT_PICKLE gets, per run, each stage's whole final state flattened to
{path: numpy array} and its schedule.
"""

import importlib.util
import os
import pickle
import shutil
import sys

import jax
import numpy as np


def load_config(config_arg: str):
  path, _, arg = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('contract_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def flat_state(state) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def fit_all(training, config, workdir, **kwargs) -> dict:
  recipe = training.validate(config)
  trained = {}
  for name in recipe.stages(config):
    stage = recipe.make_stage(config, name, trained)
    trained[name] = training.fit(stage, os.path.join(workdir, name), **kwargs)
  return {name: {'state': flat_state(t.state), 'schedule': t.stage.schedule}
          for name, t in trained.items()}


def reference(training, config_arg, workdir, stage):
  ref_dir = os.path.join(workdir, 'reference')
  result = {'reference': fit_all(training, load_config(config_arg), ref_dir, num_devices=1)}
  stages = list(result['reference'])
  earlier = stages[:stages.index(stage)]

  def fresh(name):
    path = os.path.join(workdir, name)
    for s in earlier:
      shutil.copytree(os.path.join(ref_dir, s), os.path.join(path, s))
    return path

  c = result['reference'][stage]['schedule'].checkpoint_every_steps
  diverged = fresh('diverged')
  result['nan'] = []
  for bad_step in (c + 2, 2 * c):
    try:
      fit_all(training, load_config(config_arg), diverged, num_devices=1,
              faults=f'{stage}:nan@{bad_step}')
      error = None
    except training.TrainingDivergedError as e:
      error = str(e)
    result['nan'].append((bad_step, error,
                          training.checkpoint.latest_step(os.path.join(diverged, stage))))
  result['two'] = fit_all(training, load_config(config_arg), fresh('two'), num_devices=2)
  return result


def main(mode: str, config_arg: str, workdir: str, out_path: str, stage: str = '') -> int:
  from ae_jax import training  # pylint: disable=g-import-not-at-top
  try:
    if mode == 'chain':
      result = fit_all(training, load_config(config_arg), workdir, num_devices=1)
    else:
      result = reference(training, config_arg, workdir, stage)
  except training.Preempted as preempted:
    print(preempted, flush=True)
    return 75
  with open(out_path, 'wb') as f:
    pickle.dump(result, f)
  return 0


if __name__ == '__main__':
  sys.exit(main(*sys.argv[1:]))
