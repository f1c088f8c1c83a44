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

Layers: `quantizers`, `layers`, `losses` and `models` at the bottom, then `objectives`,
`likelihood`, `corruption`, `train` and `parallel` (all imported with the
package; they need only JAX, Flax and optax). Above them, imported on first
access so that `import ae_jax` stays light (no matplotlib, scikit-learn,
TFDS or orbax): `data`, `recipes` (one module per model family),
`training` (the one training loop, `training.train_and_evaluate`),
`applications` (what a trained model is used for), `molecules`, `plotting`
and `notebook_utils`.
"""

import importlib

from ae_jax import corruption
from ae_jax import layers
from ae_jax import likelihood
from ae_jax import losses
from ae_jax import models
from ae_jax import objectives
from ae_jax import parallel
from ae_jax import quantizers
from ae_jax import train
from ae_jax.train import TrainState
from ae_jax.train import check_finite_metrics
from ae_jax.train import create_train_state
from ae_jax.train import make_eval_step
from ae_jax.train import make_train_step

# Subpackages imported on first access (PEP 562): they pull in TFDS, orbax,
# scikit-learn, matplotlib or ml_collections, which the core does not need.
_LAZY_MODULES = (
    'applications', 'data', 'molecules', 'notebook_utils', 'plotting', 'recipes', 'training',
)

__all__ = [
    'applications', 'corruption', 'data', 'layers', 'likelihood', 'losses', 'models',
    'molecules', 'notebook_utils', 'objectives', 'parallel', 'plotting', 'quantizers', 'recipes',
    'train',
    'training',
    'TrainState', 'check_finite_metrics', 'create_train_state', 'make_eval_step',
    'make_train_step',
]
__version__ = '0.1.0'


def __getattr__(name: str):
  if name in _LAZY_MODULES:
    # import_module also binds the submodule as an attribute of this package.
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY_MODULES))
