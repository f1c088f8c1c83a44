"""VQ-VAE generation: the prior stage of the `vqvae` recipe on an earlier VQ-VAE run.

Both stages (the VQ-VAE, then the gated PixelCNN prior over its code grids)
train with the ordinary launcher:

  python -m experiments.main --config=experiments/configs/apps/vq_prior.py --workdir=runs/vq_prior

This script does the same without --model_workdir; with it, the VQ-VAE is
restored from that run's <model_workdir>/model (trained by
`python -m experiments.main --config=experiments/configs/vqvae.py --workdir=runs/vqvae`)
and only the prior trains, into <workdir>/prior:

  python -m experiments.vq_prior --config=experiments/configs/apps/vq_prior.py \
      --model_workdir=runs/vqvae --workdir=runs/vq_prior_from_run

Either way <workdir> receives vq_prior.json (the prior's test NLL before
and after training against the uniform and code-frequency baselines, code
usage) and figures/ (vq_code_usage.png, vq_prior_samples.png, the VQ-VAE's
reconstructions and latent map, training curves). A rerun resumes the prior;
on SIGTERM it saves a checkpoint and exits with status 75.
"""

import os
import sys

from ae_jax import training
from experiments import cli

# As experiments/main.py (sysexits.h EX_TEMPFAIL); importing it would define its flags.
EXIT_PREEMPTED = 75


def run(config, workdir: str, model_workdir: str | None = None) -> dict[str, float]:
  """Trains the config's stages into `workdir`, the VQ-VAE restored from
  `model_workdir` when given; returns the final metrics."""
  if model_workdir is None:
    return training.train_and_evaluate(config, workdir)
  recipe = training.validate(config)
  if tuple(recipe.stages(config)) != ('model', 'prior'):
    raise ValueError('The config trains no prior: use experiments/configs/apps/vq_prior.py '
                     '(its `prior` section with num_train_steps > 0).')
  trained = training.restore(config, model_workdir, stages=('model',))
  trained['prior'] = training.fit(recipe.make_stage(config, 'prior', trained),
                                  os.path.join(workdir, 'prior'))
  prior_metrics = {f'prior/{k}': v for k, v in trained['prior'].metrics.items()}
  return {**prior_metrics, **recipe.finish(config, trained, workdir)}


def _run_or_exit(config, workdir: str, model_workdir: str | None = None) -> None:
  try:
    run(config, workdir, model_workdir)
  except training.Preempted as preempted:
    print(preempted, flush=True)
    sys.exit(EXIT_PREEMPTED)


if __name__ == '__main__':
  cli.run_app(_run_or_exit,
              config_help='Config file, e.g. experiments/configs/apps/vq_prior.py[:smoke].',
              model_workdir_help='Restore the VQ-VAE from this run (its model/ stage) instead '
                                 'of training one.')
