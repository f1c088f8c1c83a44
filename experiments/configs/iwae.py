"""MLP VAE (784-400-20) trained with the k-sample IWAE bound (Burda et al. 2016).

The README's IWAE-against-VAE comparison: dynamically binarized Fashion-MNIST
(prepared offline), batch 100, 30 epochs (18,000 steps), k = 5. The preset
'elbo' is its baseline: the same model, data, seeds and schedule trained on
the ELBO (k = 1), i.e. the README's earlier `vae.py` Fashion-MNIST run.

  python -m experiments.main --config=experiments/configs/iwae.py --workdir=runs/iwae_fm
  python -m experiments.likelihood --config=experiments/configs/iwae.py \\
      --workdir=runs/iwae_fm --num_samples=1000
  python -m experiments.main --config=experiments/configs/iwae.py:elbo --workdir=runs/vae_fm
  python -m experiments.likelihood --config=experiments/configs/iwae.py:elbo \\
      --workdir=runs/vae_fm --num_samples=1000

Both score the same 10,000 test images, binarized once with the same seed, so
the two `*_per_example.npy` files pair image by image.
"""

from experiments.configs import common

# The arguments get_config takes, for the launcher's --help.
ARGS = common.PRESETS + ('elbo',)


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'vae'
  config.model = dict(name='mlp_vae', hidden=(400,), latent_dim=20)
  config.loss = dict(beta=1.0, warmup_steps=0, reconstruction='bernoulli', objective='iwae',
                     num_samples=5)
  config = common.binarized_fashion_mnist(config)
  if arg == 'elbo':
    config.loss.objective = 'elbo'
    config.loss.num_samples = 1
    arg = None
  config = common.with_preset(config, arg)
  if arg == 'smoke':
    config.data.name = 'mnist5k'  # Needs no prepared data.
  return config
