"""Ladder VAE (Sønderby et al. 2016): 784-512-256-128 with latents 64/32/16, KL warm-up.

The default preset is the README's likelihood comparison: dynamically
binarized Fashion-MNIST (prepared offline, see /work/shared/DATA.md), batch
100, 30 epochs (18,000 steps), β warmed up from 0 to 1 over the first 5 epochs.

  python -m experiments.main --config=experiments/configs/ladder_vae.py --workdir=runs/ladder_vae
  python -m experiments.likelihood --config=experiments/configs/ladder_vae.py \
      --workdir=runs/ladder_vae --num_samples=1000

Free bits (λ nats per layer): --config.loss.free_bits=2. IWAE training instead
of the ELBO: --config.loss.objective=iwae --config.loss.num_samples=5.
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'ladder'
  config.model = dict(name='ladder_vae', hidden=(512, 256, 128), latent_dims=(64, 32, 16),
                      layers_per_block=2, activation='leaky_relu', min_variance=1e-4)
  config.loss = dict(beta=1.0, warmup_steps=5 * common.FASHION_EPOCH_STEPS, free_bits=0.0,
                     active_threshold=0.01, reconstruction='bernoulli', objective='elbo',
                     num_samples=1)
  config = common.binarized_fashion_mnist(config)
  config = common.with_preset(config, arg)
  if arg == 'smoke':
    # The smoke preset stays small and needs no prepared data: MNIST 5k, binarized.
    config.data.name = 'mnist5k'
    config.model.hidden = (32, 16, 8)
    config.model.latent_dims = (8, 4, 2)
    config.loss.warmup_steps = 4
  return config
