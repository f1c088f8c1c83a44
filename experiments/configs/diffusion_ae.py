"""Diffusion autoencoder (Preechakul et al. 2022) on the MNIST 5k subset.

A semantic encoder to a 32-d z_sem and a z_sem-conditioned DDPM U-Net
(channels 32/64/64, T = 1000, linear β), then a latent DDPM on z_sem for
unconditional samples: recipe 'diffusion_ae', stages 'model' and 'latent'
(`ae_jax/recipes/diffusion_ae.py`). The run writes ddim_psnr / zsem_psnr (DDIM
encode → decode and z_sem with random x_T, dB) and figures of
reconstructions, an interpolation strip and samples, and the samples' quality
(a Fréchet distance in a small MNIST classifier's features, nearest-training-
image distances). Both stages evaluate and sample with EMA weights
(`ema_decay`). 1000 steps of batch 32 (before EMA: ddim_psnr 39.7 dB,
zsem_psnr 10.8 dB); the whole run, latent DDPM and figures included, took 10
minutes on 2 CPU cores shared with one other test (tests/diffusion_slow_test.py).
README "Diffusion autoencoder" has a shorter run's numbers.

  python -m experiments.main --config=experiments/configs/diffusion_ae.py --workdir=runs/diffusion_ae

--config.diffusion.latent.num_train_steps=0 skips the latent DDPM (no samples).
"""

import ml_collections

from experiments.configs import common


def diffusion_section() -> ml_collections.ConfigDict:
  """`config.diffusion`: the DDIM evaluation and the latent DDPM (stage 'latent').

  num_eval_examples test images give ddim_psnr / zsem_psnr; the latent DDPM
  (`models.LatentDenoiser`, `hidden` x `num_layers`) trains for
  `num_train_steps` steps of `batch_size` codes with Adam at `learning_rate`
  decayed to 0 by a cosine, and samples with `num_sampling_steps` DDIM steps.
  """
  return ml_collections.ConfigDict(dict(
      num_eval_examples=64,
      num_interpolation_points=8,
      num_samples=16,
      num_quality_samples=128,
      ema_decay=0.999,
      latent=dict(
          ema_decay=0.999,
          num_train_steps=3000, batch_size=256, learning_rate=1e-3, hidden=256,
          num_layers=4, num_timesteps=1000, schedule='linear', num_sampling_steps=100,
          log_every_steps=100, eval_every_steps=1000, checkpoint_every_steps=1000, seed=0),
  ))


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'diffusion_ae'
  config.model = dict(name='diffusion_ae', latent_dim=32, channels=(32, 64, 64),
                      num_res_blocks=1, time_embed_dim=64, encoder_channels=(32, 64, 128),
                      num_timesteps=1000, schedule='linear', num_ddim_steps=100)
  config.loss = dict()
  config.optim.learning_rate = 1e-3
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 100
  # Decays to 0 at the last step, whatever --config.train.num_train_steps says.
  config.optim.decay_steps = config.train.get_ref('num_train_steps')
  config.optim.grad_clip_norm = 1.0
  config.data.batch_size = 32
  config.train.num_train_steps = 1000
  config.train.eval_every_steps = 250
  config.train.checkpoint_every_steps = 250
  config.train.log_every_steps = 25
  config.diffusion = diffusion_section()
  if arg == 'smoke':
    # One U-Net level: compiling the model (its initialisation above all) dominates a
    # smoke run, and each level roughly doubles it.
    config.model.channels = (8,)
    config.model.encoder_channels = (8,)
    config.model.time_embed_dim = 16
    config.model.latent_dim = 8
    config.model.num_ddim_steps = 5
    config.optim.warmup_steps = 2
    config.diffusion.num_eval_examples = 8
    config.diffusion.num_interpolation_points = 4
    config.diffusion.num_samples = 4
    config.diffusion.num_quality_samples = 8
    # Both stages: 6 steps, checkpoints every 3 (the contract test's faults need it).
    config.diffusion.latent.update(dict(
        num_train_steps=6, batch_size=16, hidden=32, num_layers=2, num_timesteps=100,
        num_sampling_steps=5, log_every_steps=2, eval_every_steps=3, checkpoint_every_steps=3))
  elif arg == 'colab_tpu':
    config.model.channels = (64, 128, 128)
    config.model.num_res_blocks = 2
    config.model.latent_dim = 64
    config.diffusion.num_eval_examples = 500
    config.diffusion.latent.num_train_steps = 20_000
  return common.with_preset(config, arg)
