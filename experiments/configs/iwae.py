"""MLP VAE (784-400-20) trained with the k-sample IWAE bound (Burda et al. 2016).

Same model and data as the README's likelihood comparison (experiments/configs/
ladder_vae.py): dynamically binarized Fashion-MNIST, batch 100, 30 epochs.

  python -m experiments.main --config=experiments/configs/iwae.py --workdir=runs/iwae
  python -m experiments.likelihood --config=experiments/configs/iwae.py \
      --workdir=runs/iwae --num_samples=1000
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'vae'
  config.model = dict(name='mlp_vae', hidden=(400,), latent_dim=20)
  config.loss = dict(beta=1.0, warmup_steps=0, reconstruction='bernoulli', objective='iwae',
                     num_samples=5)
  config = common.binarized_fashion_mnist(config)
  config = common.with_preset(config, arg)
  if arg == 'smoke':
    config.data.name = 'mnist5k'  # Needs no prepared data.
  return config
