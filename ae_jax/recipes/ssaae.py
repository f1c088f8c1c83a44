"""The semi-supervised adversarial autoencoder: four optimizers in one pure step.

Makhzani et al. (2015, section 5) split the code of an adversarial autoencoder
into a class y ~ q(y|x) (a softmax over K classes) and a continuous style z.
Each step makes four updates, each with its own optax optimizer:

  recon  encoder and decoder on the reconstruction of an unlabelled batch
         from [softmax(y), z];
  disc   both discriminators: one-hot samples of a uniform categorical prior
         against softmax(y), N(0, I) samples against z;
  gen    the encoder, as the generator, fools both updated discriminators;
  semi   q(y|x) (trunk and class head) by cross-entropy on a labelled batch.

All four optimizer states live in one `train.TrainState`
(`opt_state = {'recon', 'disc', 'gen', 'semi'}`), so the loop checkpoints,
resumes and shards it like any other state. With `loss.supervised_only=True`
the step makes the `semi` update alone: the same trunk and class head trained
only on the labelled examples, the supervised baseline.

Labels: `data.num_labels` training examples keep their labels, the same
number of each class, chosen within each class by a permutation seeded with
`data.label_seed` (`labelled_indices`); the step never sees any other label.
Every train batch holds B unlabelled images of the whole train split
('image'; its labels are dropped) and B labelled examples ('labelled_image',
'labelled_label') drawn from the labelled set by `ae_jax.data.batches` with
a seed derived from `data.shuffle_seed`, so both are functions of the step
alone and a resumed run sees what an uninterrupted one would.

Config: `config.model` holds `models.aae.SemiSupervisedAAE`'s fields (name
'ssaae'); `config.loss` the reconstruction and `supervised_only`;
`config.optim`, `config.disc_optim`, `config.gen_optim` and
`config.semi_optim` the four phases' optimizers (with `supervised_only`,
`config.optim` alone trains the classifier and the other three sections must
be absent). Eval metrics (`make_objective`): error (test classification
error of argmax q(y|x), also 'loss'), xent, recon, disc_y_loss, disc_z_loss
and gen_loss. Figures: reconstructions, the latent map, samples.png (one row
per class, one column per shared style) and the training curves.

Devices: `fit` jits the step on one device and shards it over several. Built
with `axis_name`, the step runs under `jax.pmap`: every replica draws the
prior samples of the whole global batch, as one device would, and keeps its
own rows.

Shape letters: B batch, K classes, Z style.

References:
  Makhzani, Shlens, Jaitly, Goodfellow & Frey, "Adversarial Autoencoders",
  2015, section 5, https://arxiv.org/abs/1511.05644.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import data as data_lib
from ae_jax import objectives
from ae_jax import train
from ae_jax.models.aae import SemiSupervisedAAE
from ae_jax.recipes import common
from ae_jax.recipes.base import Stage

Array = jax.Array

MODELS = {'ssaae': SemiSupervisedAAE}
# The parameter groups each phase's optimizer updates.
PHASES = {'recon': ('trunk', 'y_head', 'z_head', 'decoder'), 'disc': ('disc_y', 'disc_z'),
          'gen': ('trunk', 'y_head', 'z_head'), 'semi': ('trunk', 'y_head')}
# Each phase's optimizer section; with supervised_only, config.optim trains 'semi'.
OPTIMIZERS = {'recon': 'optim', 'disc': 'disc_optim', 'gen': 'gen_optim', 'semi': 'semi_optim'}
SUPERVISED_OPTIMIZERS = {'semi': 'optim'}
# Stream of SeedSequence([data.label_seed, _LABEL_STREAM, class]) that picks the
# labelled examples, and of [data.shuffle_seed, _LABELLED_BATCH_STREAM] that
# seeds the labelled batches (apart from the unlabelled batches' own seed).
_LABEL_STREAM = 2
_LABELLED_BATCH_STREAM = 3


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  """The loss settings shared by the eval objective and the train step."""
  reconstruction: str
  supervised_only: bool
  num_classes: int
  latent_dim: int

  @property
  def phases(self) -> tuple[str, ...]:
    return ('semi',) if self.supervised_only else tuple(PHASES)


def hyperparameters(model: nn.Module, *, reconstruction: str = 'bernoulli',
                    supervised_only: bool = False) -> Hyperparameters:
  """Checks the loss settings (`config.loss`) against the model.

  Args:
    model: a `SemiSupervisedAAE`.
    reconstruction: 'bernoulli' or 'mse'.
    supervised_only: train q(y|x) on the labelled examples alone (the baseline).

  Raises:
    TypeError: a model without the semi-supervised AAE's methods.
    ValueError: a setting that cannot train, by name.
  """
  for method in ('encode', 'classify', 'decode', 'discriminate_y', 'discriminate_z'):
    if not hasattr(model, method):
      raise TypeError(f'{type(model).__name__} has no `{method}`: the ssaae step needs an '
                      'ae_jax.models.aae.SemiSupervisedAAE.')
  if reconstruction not in objectives.RECONSTRUCTIONS:
    raise ValueError(f'Unknown reconstruction {reconstruction!r}; expected one of '
                     f'{objectives.RECONSTRUCTIONS}.')
  if not isinstance(supervised_only, (bool, np.bool_)):
    raise ValueError(f'loss.supervised_only must be True or False, got {supervised_only!r}.')
  return Hyperparameters(reconstruction=reconstruction, supervised_only=bool(supervised_only),
                         num_classes=model.num_classes, latent_dim=model.latent_dim)


# ----------------------------------------------------------------------------
# Labels.


def check_num_labels(num_labels: Any, num_classes: int) -> None:
  """Raises ValueError unless `num_labels` is a positive multiple of K."""
  if not isinstance(num_labels, (int, np.integer)) or isinstance(num_labels, bool) or (
      num_labels <= 0 or num_labels % num_classes):
    raise ValueError(f'config.data.num_labels must be a positive multiple of the '
                     f'{num_classes} classes (the labelled set is balanced), got {num_labels!r}.')


def labelled_indices(labels: np.ndarray, num_labels: int, *, num_classes: int,
                     seed: int) -> np.ndarray:
  """The examples that keep their labels: `num_labels / num_classes` of each class.

  Within class c the examples are taken in the order of a permutation drawn
  from numpy's PCG64 seeded with SeedSequence([seed, 2, c]), so the set is a
  function of (labels, num_labels, seed) alone, and a larger `num_labels`
  with the same seed contains a smaller one.

  Args:
    labels: int [N], the train split's labels in {0, ..., K-1}.
    num_labels: how many examples keep their labels; a multiple of K.
    num_classes: K.
    seed: non-negative int.

  Returns:
    Sorted int64 indices into `labels`, [num_labels].

  Raises:
    ValueError: num_labels not a positive multiple of K, a class with fewer
      examples than its share, labels outside {0, ..., K-1}.
  """
  labels = np.asarray(labels)
  check_num_labels(num_labels, num_classes)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'Train labels must lie in [0, {num_classes}) for the labelled set; got '
                     f'[{labels.min()}, {labels.max()}].')
  per_class = num_labels // num_classes
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ValueError(f'config.data.num_labels={num_labels} needs {per_class} examples of '
                       f'class {c}; the train split has {len(members)}.')
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _LABEL_STREAM, c])))
    chosen.append(members[rng.permutation(len(members))[:per_class]])
  return np.sort(np.concatenate(chosen))


def _split_labels(source, chunk: int = 4096) -> np.ndarray:
  return np.concatenate([source.get(np.arange(i, min(i + chunk, len(source))))[1]
                         for i in range(0, len(source), chunk)])


def labelled_set(config, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Images [L, H, W, C] and labels [L] of the train split's labelled examples."""
  source = common.data_source(config, config.data.train_split)
  index = labelled_indices(_split_labels(source), config.data.num_labels,
                           num_classes=num_classes, seed=config.data.label_seed)
  images, labels = source.get(index)
  return np.asarray(images, np.float32), np.asarray(labels, np.int32)


def labelled_seed(shuffle_seed: int) -> int:
  """The labelled batches' seed: a stream of `shuffle_seed` apart from the unlabelled ones'."""
  return int(np.random.SeedSequence([shuffle_seed, _LABELLED_BATCH_STREAM]).generate_state(1)[0])


def train_data(config, num_classes: int) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
  """`train_data(start_step)`: unlabelled batches of the train split beside labelled ones.

  Each batch is {'image': [B, ...] (labels dropped), 'labelled_image': [B, ...],
  'labelled_label': int32 [B]} (this process's rows of each).
  """
  images, labels = labelled_set(config, num_classes)
  unlabelled = common.train_data(config)
  seed = labelled_seed(config.data.shuffle_seed)

  def iterate(start_step: int):
    labelled = data_lib.batches((images, labels), batch_size=config.data.batch_size, seed=seed,
                                shuffle=True, binarize=config.data.binarize,
                                start_step=start_step)
    for batch, extra in zip(unlabelled(start_step), labelled):
      yield {'image': batch['image'], 'labelled_image': extra['image'],
             'labelled_label': extra['label']}

  return iterate


# ----------------------------------------------------------------------------
# Losses, the eval objective and the step.


def _bce_real(logits_B: Array) -> Array:
  """-log D: the discriminator says 'prior sample'."""
  return jax.nn.softplus(-logits_B)


def _bce_fake(logits_B: Array) -> Array:
  """-log(1 - D)."""
  return jax.nn.softplus(logits_B)


def prior_samples(hp: Hyperparameters, key: Array, num: int, axis_name: str | None = None
                  ) -> tuple[Array, Array]:
  """One-hot class vectors [num, K] (classes uniform) and N(0, I) styles [num, Z].

  Under pmap (`axis_name`) the replica draws the samples of the whole global
  batch from the same key, as one device would, and keeps its own rows.
  """
  if axis_name is not None:
    size = jax.lax.axis_size(axis_name)
    y, z = prior_samples(hp, key, num * size)
    start = jax.lax.axis_index(axis_name) * num
    return (jax.lax.dynamic_slice_in_dim(y, start, num),
            jax.lax.dynamic_slice_in_dim(z, start, num))
  class_key, style_key = jax.random.split(key)
  classes = jax.random.randint(class_key, (num,), 0, hp.num_classes)
  return (jax.nn.one_hot(classes, hp.num_classes),
          jax.random.normal(style_key, (num, hp.latent_dim)))


def _xent(logits_BxK: Array, labels_B: Array) -> Array:
  # Padding rows carry label -1: any class will do, the mask drops them.
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, jnp.maximum(labels_B, 0))


def make_objective(model: nn.Module, **loss) -> objectives.Objective:
  """The eval objective: `fn(params, batch, key, *, step=0) -> (error, metrics)`.

  Metrics (batch means over mask-1 rows): 'error' = mean 1[argmax q(y|x) != label]
  (also the returned loss), 'xent' = -log q(label|x), 'recon' (the
  reconstruction from [softmax(y), z]), 'disc_y_loss' and 'disc_z_loss'
  (-log D(prior) - log(1 - D(code); 2 ln 2 at chance) and 'gen_loss'
  (-log D_y(softmax y) - log D_z(z)).

  Args:
    model: a `SemiSupervisedAAE`.
    **loss: the settings of `hyperparameters`.
  """
  hp = hyperparameters(model, **loss)

  def objective(params, batch, key: Array, *, step=0):
    del step
    x, labels = batch['image'], batch['label']
    code = model.apply(params, x, method=model.encode)
    y = jax.nn.softmax(code.y_logits, -1)
    logits = model.apply(params, y, code.z, method=model.decode).reshape(x.shape)
    mean = lambda values: objectives.batch_mean(values, batch)
    y_prior, z_prior = prior_samples(hp, key, x.shape[0])
    dy_fake = model.apply(params, y, method=model.discriminate_y)
    dz_fake = model.apply(params, code.z, method=model.discriminate_z)
    dy_real = model.apply(params, y_prior, method=model.discriminate_y)
    dz_real = model.apply(params, z_prior, method=model.discriminate_z)
    error = mean((jnp.argmax(code.y_logits, -1) != labels).astype(jnp.float32))
    metrics = {
        'error': error,
        'xent': mean(_xent(code.y_logits, labels)),
        'recon': mean(objectives.reconstruction_loss(logits, x, kind=hp.reconstruction)),
        'disc_y_loss': mean(_bce_real(dy_real) + _bce_fake(dy_fake)),
        'disc_z_loss': mean(_bce_real(dz_real) + _bce_fake(dz_fake)),
        'gen_loss': mean(_bce_real(dy_fake) + _bce_real(dz_fake)),
    }
    return error, metrics

  return objective


def _group(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
  return {'params': {name: params['params'][name] for name in names}}


def _merge(params: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
  return {**params, 'params': {**params['params'], **group['params']}}


def _check_txs(hp: Hyperparameters, txs: Mapping[str, Any]) -> None:
  if set(txs) != set(hp.phases):
    raise ValueError(f'Expected one optimizer per phase {sorted(hp.phases)}, got {sorted(txs)}.')


def create_state(params: Mapping[str, Any], txs: Mapping[str, optax.GradientTransformation],
                 model_state: Mapping[str, Any] | None = None) -> train.TrainState:
  """The step-0 state: one optimizer state per phase in `txs`, each over its own group."""
  unknown = set(txs) - set(PHASES)
  if unknown:
    raise ValueError(f'Unknown phases {sorted(unknown)}; expected some of {sorted(PHASES)}.')
  opt_state = {phase: txs[phase].init(_group(params, PHASES[phase])) for phase in txs}
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=dict(params),
                          opt_state=opt_state, model_state=dict(model_state or {}))


def train_step_fn(model: nn.Module, txs: Mapping[str, optax.GradientTransformation], *,
                  axis_name: str | None = None, **loss):
  """The pure (un-jitted) semi-supervised AAE step.

  1. recon: trunk, both heads and decoder take a step of `txs['recon']` on the
     reconstruction of batch['image'] from [softmax(y), z].
  2. disc: with the updated encoder's codes held fixed, both discriminators
     take a step of `txs['disc']` on
     -log D_y(y_prior) - log(1 - D_y(softmax y)) - log D_z(z_prior) - log(1 - D_z(z))
     (their parameters are disjoint, so this is two independent updates).
  3. gen: trunk and heads take a step of `txs['gen']` on
     -log D_y(softmax y) - log D_z(z) against the updated discriminators.
  4. semi: trunk and class head take a step of `txs['semi']` on the
     cross-entropy of batch['labelled_label'] under q(y|batch['labelled_image']).

  With `supervised_only` only step 4 runs and `txs` is {'semi'}. The prior
  noise comes from `fold_in(key, state.step)`.

  Args:
    model: a `SemiSupervisedAAE`.
    txs: one optimizer per phase: {'recon', 'disc', 'gen', 'semi'}, or {'semi'}
      with supervised_only.
    axis_name: the mapped device axis under `jax.pmap` (gradients and losses
      are averaged over it); None on one device and under jit with shardings.
    **loss: the settings of `hyperparameters`.

  Returns:
    `step(state, batch, key) -> (new_state, metrics)`; metrics are each
    phase's loss before its own update ('recon', 'disc_y_loss',
    'disc_z_loss', 'gen_loss', 'xent'), the labelled batch's 'train_error',
    'loss' ('recon', or 'xent' with supervised_only) and the gradient norms.

  References:
    Makhzani et al., "Adversarial Autoencoders", 2015, section 5.
  """
  hp = hyperparameters(model, **loss)
  _check_txs(hp, txs)
  pmean = (lambda tree: tree) if axis_name is None else (
      lambda tree: jax.lax.pmean(tree, axis_name))

  def update(phase, loss_fn, params, opt_state):
    group = _group(params, PHASES[phase])
    (value, aux), grads = pmean(jax.value_and_grad(
        lambda g: loss_fn(_merge(params, g)), has_aux=True)(group))
    updates, new_opt = txs[phase].update(grads, opt_state[phase], group)
    group = optax.apply_updates(group, updates)
    return (_merge(params, group), {**opt_state, phase: new_opt},
            {**aux, f'{phase}_grad_norm': train.global_norm(grads)})

  def step(state: train.TrainState, batch, key: Array):
    key = jax.random.fold_in(key, state.step)
    params, opt_state, metrics = state.params, state.opt_state, {}
    if not hp.supervised_only:
      x = batch['image']
      y_prior, z_prior = prior_samples(hp, key, x.shape[0], axis_name)

      def recon_loss(p):
        code = model.apply(p, x, method=model.encode)
        logits = model.apply(p, jax.nn.softmax(code.y_logits, -1), code.z,
                             method=model.decode).reshape(x.shape)
        value = jnp.mean(objectives.reconstruction_loss(logits, x, kind=hp.reconstruction))
        return value, {'recon': value}

      params, opt_state, aux = update('recon', recon_loss, params, opt_state)
      metrics.update(aux)
      code = jax.lax.stop_gradient(model.apply(params, x, method=model.encode))
      y_data = jax.nn.softmax(code.y_logits, -1)

      def disc_loss(p):
        y_term = jnp.mean(_bce_real(model.apply(p, y_prior, method=model.discriminate_y))
                          + _bce_fake(model.apply(p, y_data, method=model.discriminate_y)))
        z_term = jnp.mean(_bce_real(model.apply(p, z_prior, method=model.discriminate_z))
                          + _bce_fake(model.apply(p, code.z, method=model.discriminate_z)))
        return y_term + z_term, {'disc_y_loss': y_term, 'disc_z_loss': z_term}

      params, opt_state, aux = update('disc', disc_loss, params, opt_state)
      metrics.update(aux)

      def gen_loss(p):
        c = model.apply(p, x, method=model.encode)
        value = jnp.mean(
            _bce_real(model.apply(p, jax.nn.softmax(c.y_logits, -1), method=model.discriminate_y))
            + _bce_real(model.apply(p, c.z, method=model.discriminate_z)))
        return value, {'gen_loss': value}

      params, opt_state, aux = update('gen', gen_loss, params, opt_state)
      metrics.update(aux)

    x_l, y_l = batch['labelled_image'], batch['labelled_label'].astype(jnp.int32)

    def semi_loss(p):
      logits = model.apply(p, x_l, method=model.classify)
      value = jnp.mean(_xent(logits, y_l))
      wrong = jnp.mean((jnp.argmax(logits, -1) != y_l).astype(jnp.float32))
      return value, {'xent': value, 'train_error': wrong}

    params, opt_state, aux = update('semi', semi_loss, params, opt_state)
    metrics.update(aux)
    metrics['loss'] = metrics['xent'] if hp.supervised_only else metrics['recon']
    metrics['grad_norm'] = metrics[f'{hp.phases[0]}_grad_norm']
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


# ----------------------------------------------------------------------------
# The recipe protocol.


def _optimizer_sections(config) -> dict[str, str]:
  return SUPERVISED_OPTIMIZERS if config.loss.get('supervised_only', False) else OPTIMIZERS


def optimizers(config) -> dict[str, optax.GradientTransformation]:
  """One optimizer per phase from its config section (`OPTIMIZERS`, or
  `SUPERVISED_OPTIMIZERS` with loss.supervised_only).

  Raises:
    ValueError: a section missing, invalid, or present without effect (named).
  """
  sections = _optimizer_sections(config)
  txs = {}
  for phase, section in sections.items():
    if section not in config:
      raise ValueError(f"Recipe 'ssaae' needs a config.{section} section (the {phase} phase's "
                       'optimizer).')
    txs[phase] = common.build_optimizer(config[section], field=section)
  if config.loss.get('supervised_only', False):
    for section in OPTIMIZERS.values():
      if section not in sections.values() and section in config:
        raise ValueError(f'config.{section} has no effect with config.loss.supervised_only=True '
                         '(config.optim alone trains the classifier); leave the section out '
                         '(the aae.py:supervised preset does).')
  return txs


def _parts(config):
  model = common.build_model(config.model, MODELS)
  objective = common.build_objective(make_objective, model, config.loss)
  return model, optimizers(config), objective


def validate(config) -> None:
  common.validate_sections(config)
  model, _, _ = _parts(config)
  for field in ('num_labels', 'label_seed'):
    if field not in config.data:
      raise ValueError(f"Recipe 'ssaae' needs config.data.{field}.")
  num_labels = config.data.num_labels
  check_num_labels(num_labels, model.num_classes)
  if config.loss.get('supervised_only', False):
    common.check_unused(config, {'loss.reconstruction': 'with loss.supervised_only=True no '
                                 'decoder trains'}, common.defaults_of(hyperparameters))
  if config.data.batch_size > num_labels:
    raise ValueError(f'config.data.batch_size={config.data.batch_size} must be at most '
                     f'config.data.num_labels={num_labels}: every step also draws a labelled '
                     'batch of that size.')


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def make_stage(config, name, trained) -> Stage:
  del trained
  model, txs, objective = _parts(config)
  x = common.example_images(config)

  def init(key):
    params, model_state = common.split_variables(model.init(key, x))
    return create_state(params, txs, model_state)

  return Stage(
      name=name, init=init,
      train_step=train_step_fn(model, txs, **common.as_kwargs(config.loss)),
      eval_step=train.eval_step_fn(objective), train_data=train_data(config, model.num_classes),
      eval_data=common.eval_data(config), schedule=common.schedule(config),
      seed=config.train.seed, model=model)


def finish(config, trained, workdir) -> dict[str, float]:
  fitted = trained['model']
  if config.loss.get('supervised_only', False):
    # Only the classifier trained: decoder figures would show an untrained network.
    common.training_curves(fitted, workdir)
    return {}
  model = fitted.stage.model
  encode = common.jit_apply(model, 'encode')
  decode = common.jit_apply(model, 'decode')

  def codes(v, x):
    code = encode(v, x)
    return jnp.concatenate([jax.nn.softmax(code.y_logits, -1), code.z], -1)

  def reconstruct(v, x):
    code = encode(v, x)
    return decode(v, jax.nn.softmax(code.y_logits, -1), code.z).reshape(x.shape)

  common.write_figures(config, fitted, workdir, encode=codes, reconstruct=reconstruct)
  if jax.process_index() == 0:
    class_style_figure(config, model, fitted.variables, workdir, fitted.eval_key)
  return {}


def class_style_figure(config, model: nn.Module, variables, workdir: str, key: Array,
                       num_styles: int = 8) -> str:
  """samples.png: decoded [one-hot class, style], one row per class, one column per
  style z ~ N(0, I) shared by every row (the paper's figure of content and style)."""
  from ae_jax import plotting  # pylint: disable=g-import-not-at-top
  k = model.num_classes
  y = jnp.repeat(jnp.eye(k), num_styles, axis=0)
  z = jnp.tile(jax.random.normal(key, (num_styles, model.latent_dim)), (k, 1))
  x = common.example_images(config)
  images = common.decode_pixels(model.apply(variables, y, z, method=model.decode), config)
  return plotting.save_image_grid(
      images.reshape((k * num_styles,) + x.shape[1:]),
      plotting.figure_path(workdir, 'samples.png'),
      title=f'{common.title(config)}: one row per class, one column per style',
      ncols=num_styles)
