"""VAE with the VampPrior (Tomczak & Welling 2018): MLP 784-400-40, 500 pseudo-inputs.

The ELBO with the KL term estimated by one posterior sample (the mixture
prior has no closed-form KL), a linear KL warm-up over 500 steps, Bernoulli
likelihood. For the IWAE bound under the same prior set
--config.loss.num_samples=5.

  python -m experiments.main --config=experiments/configs/vampprior.py --workdir=runs/vampprior
  python -m experiments.likelihood --config=experiments/configs/vampprior.py \\
      --workdir=runs/vampprior --num_samples=1000
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'vampprior'
  config.model = dict(name='mlp_vamp', hidden=(400,), latent_dim=40, num_pseudo_inputs=500)
  config.loss = dict(num_samples=1, beta=1.0, warmup_steps=500)
  config = common.with_preset(config, arg)
  if arg == 'smoke':
    config.model.num_pseudo_inputs = 10
    config.loss.warmup_steps = 3
  return config
