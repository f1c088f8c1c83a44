"""Contractive MLP autoencoder: reconstruction + λ‖J_f(x)‖²_F (Rifai et al. 2011).

loss.mode picks how the Jacobian penalty is computed: 'auto' (exact, reverse
mode for this narrow code), 'jacfwd', 'jacrev', 'dense_first' (exact, cheapest)
or 'estimate' (unbiased random projections).

  python -m experiments.main --config=experiments/configs/contractive.py --workdir=runs/contractive
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'autoencoder'
  config.model = dict(name='mlp_ae', hidden=(256, 128), latent_dim=32, activation='relu',
                      latent_activation='sigmoid')
  config.loss = dict(objective='contractive', weight=0.1, mode='auto', num_probes=1, reconstruction='bernoulli')
  return common.with_preset(config, arg)
