"""ae-jax: autoencoders in JAX and Flax.

The building blocks, for use from your own code:

>>> import jax, optax
>>> from ae_jax import models, objectives, train
>>> model = models.MLPVAE(latent_dim=2)
>>> x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
>>> key = jax.random.key(1)
>>> params = model.init(key, x[:1], key)
>>> objective = objectives.make_vae_objective(model, beta=1.0)
>>> tx = optax.adam(1e-3)
>>> state = train.create_train_state(params, tx)
>>> step = train.make_train_step(objective, tx)
>>> state, metrics = step(state, {'image': x}, key)
>>> sorted(metrics)
['beta', 'elbo', 'grad_norm', 'kl', 'loss', 'recon']
"""

from ae_jax import adversarial
from ae_jax import applications
from ae_jax import build
from ae_jax import corruption
from ae_jax import data
from ae_jax import likelihood
from ae_jax import losses
from ae_jax import models
from ae_jax import molecules
from ae_jax import nn
from ae_jax import objectives
from ae_jax import parallel
from ae_jax import train
from ae_jax.train import TrainState
from ae_jax.train import check_finite_metrics
from ae_jax.train import create_train_state
from ae_jax.train import make_eval_step
from ae_jax.train import make_train_step

__all__ = [
    'adversarial', 'applications', 'build', 'corruption', 'data', 'likelihood', 'losses',
    'models', 'molecules', 'nn', 'objectives', 'parallel', 'train',
    'TrainState', 'check_finite_metrics', 'create_train_state', 'make_eval_step',
    'make_train_step',
]
__version__ = '0.1.0'
