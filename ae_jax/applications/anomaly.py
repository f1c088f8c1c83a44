"""Anomaly detection with autoencoders: scores, thresholds and the one-class protocol.

Every score is "higher means more anomalous":

- 'reconstruction_error': per-example mean squared error in pixel space of
  the decoder output through the sigmoid (any model; `embedding.reconstruct`);
- 'negative_elbo': -(E_q[log p(x|z)] - KL(q(z|x) || p(z))), the expectation
  over L samples, the KL in closed form (VAEs);
- 'iwae_nll': -log p(x) estimated with K importance samples from q(z|x),
      log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x),
  a lower bound on log p(x) in expectation that tightens as K grows and
  equals the single-sample ELBO estimate at K = 1 (VAEs);
- 'reconstruction_probability': -(1/L) sum_l log p(x|z_l), z_l ~ q(z|x),
  An & Cho's reconstruction probability as an anomaly score (VAEs). An & Cho
  average the likelihood p(x|z_l) itself; we average its logarithm, which
  does not underflow for 784 pixels and orders examples almost alike.

The likelihood p(x|z) is the Bernoulli of the decoder logits, as in training
(`losses.bernoulli_nll`, grey levels used as soft targets); in nats.

Samples are drawn per example: example n of a set scored with `key` uses
`fold_in(key, n)`, and its sample k uses `fold_in(fold_in(key, n), k)`, so a
score depends neither on the batch size nor on the chunking of the samples.
The K samples are evaluated `chunk_size` at a time under `jax.lax.map`, so
memory grows with the chunk, not with K: K = 5000 fits where K decoder
passes at once would not.

The one-class protocol of Ruff et al.: for each class c, train on the train
images of class c only (a fraction held out as normal validation data for the
threshold), then score the whole test split, c normal and every other class
anomalous; report ROC-AUC per class and the mean over classes.

Shape letters: N examples, B batch, K importance samples, C chunk, Z latent.

References:
  An & Cho, "Variational Autoencoder based Anomaly Detection using
  Reconstruction Probability", SNU Data Mining Center, Special Lecture on
  IE 2(1), 2015.
  Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR
  2016, https://arxiv.org/abs/1509.00519.
  Ruff et al., "Deep One-Class Classification", ICML 2018 (the one-class
  protocol on MNIST and CIFAR-10).
  Sakurada & Yairi, "Anomaly Detection Using Autoencoders with Nonlinear
  Dimensionality Reduction", MLSDA 2014 (reconstruction error as a score).
  Davis & Goadrich, "The relationship between Precision-Recall and ROC
  curves", ICML 2006.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import likelihood
from ae_jax import losses
from ae_jax.applications import common
from ae_jax.applications import embedding

Variables = common.Variables

SCORES = ('reconstruction_error', 'negative_elbo', 'iwae_nll', 'reconstruction_probability')
VAE_SCORES = SCORES[1:]


class SampleTerms(NamedTuple):
  """Log densities of K posterior samples per example, in nats.

  Attributes:
    log_px_z: log p(x | z_k), [B, K].
    log_pz: log N(z_k; 0, I), [B, K].
    log_qz: log q(z_k | x), [B, K].
    kl: KL(q(z|x) || N(0, I)) in closed form, [B].
  """
  log_px_z: jax.Array
  log_pz: jax.Array
  log_qz: jax.Array
  kl: jax.Array


def sample_terms(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    num_samples: int,
    chunk_size: int | None = None,
) -> SampleTerms:
  """Draws K samples z_k ~ q(z|x) per example and evaluates their log densities.

  The sampling is `ae_jax.likelihood.log_weight_terms` (same keys, same
  chunking); this adds the closed-form KL of the one-layer VAE.

  Args:
    model: a VAE (MLPVAE or ConvVAE) with a Bernoulli decoder.
    variables: its variables.
    x: a batch of images [B, H, W, C] in [0, 1].
    key: one key (example b then uses fold_in(key, b)) or one key per
      example, [B].
    num_samples: K >= 1.
    chunk_size: samples decoded at once (None: all K). The result does not
      depend on it beyond float rounding.

  Returns:
    `SampleTerms`.
  """
  if getattr(model, 'family', None) != 'vae':
    raise ValueError(f'{type(model).__name__} has no posterior q(z|x); likelihood '
                     "scores need a VAE. Use 'reconstruction_error'.")
  terms = likelihood.log_weight_terms(model, variables, x, key, num_samples=num_samples,
                                      chunk_size=chunk_size)
  mean, log_var = model.apply(variables, x, method='encode')
  return SampleTerms(log_px_z=terms.log_px_z, log_pz=terms.log_pz, log_qz=terms.log_qz,
                     kl=losses.gaussian_kl(mean, log_var))


log_mean_exp = likelihood.log_mean_exp


def log_importance_weights(terms: SampleTerms) -> jax.Array:
  """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), [B, K]."""
  return terms.log_px_z + terms.log_pz - terms.log_qz


# The K-sample importance-weighted estimate of log p(x), [B] nats; for every
# model `ae_jax.likelihood` supports (the ladder VAE too).
iwae_log_likelihood = likelihood.iwae_log_likelihood


def elbo(model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array, *,
         num_samples: int = 1, chunk_size: int | None = None) -> jax.Array:
  """ELBO, (1/L) sum_l log p(x|z_l) - KL(q(z|x) || p(z)) with the KL in closed form, [B]."""
  terms = sample_terms(model, variables, x, key, num_samples=num_samples,
                       chunk_size=chunk_size)
  return jnp.mean(terms.log_px_z, axis=1) - terms.kl


def reconstruction_log_probability(model: nn.Module, variables: Variables, x: jax.Array,
                                   key: jax.Array, *, num_samples: int = 10,
                                   chunk_size: int | None = None) -> jax.Array:
  """(1/L) sum_l log p(x|z_l), z_l ~ q(z|x): An & Cho's reconstruction probability
  (in log space, see the module docstring), [B] nats."""
  terms = sample_terms(model, variables, x, key, num_samples=num_samples,
                       chunk_size=chunk_size)
  return jnp.mean(terms.log_px_z, axis=1)


def available_scores(model: nn.Module) -> tuple[str, ...]:
  """The scores `anomaly_scores` can compute for `model`."""
  return SCORES if getattr(model, 'family', None) == 'vae' else SCORES[:1]


def anomaly_scores(
    model: nn.Module,
    variables: Variables,
    images: np.ndarray,
    key: jax.Array,
    *,
    scores: Sequence[str] | None = None,
    iwae_samples: int = 100,
    elbo_samples: int = 1,
    recon_samples: int = 10,
    chunk_size: int | None = 50,
    batch_size: int = 256,
    output_activation: str = 'sigmoid',
    desc: str | None = None,
) -> dict[str, np.ndarray]:
  """Anomaly scores of a set of images, higher meaning more anomalous.

  The VAE scores share their samples: one pass draws max(K, L) samples per
  example; 'iwae_nll' uses the first `iwae_samples`, 'negative_elbo' the
  first `elbo_samples`, 'reconstruction_probability' the first
  `recon_samples`.

  Args:
    model, variables: a trained ae_jax model.
    images: [N, H, W, C] in [0, 1].
    key: PRNG key; example n uses fold_in(key, n).
    scores: names from `SCORES`; None means all that `model` supports.
    iwae_samples, elbo_samples, recon_samples: K, and L of the ELBO and of
      the reconstruction probability.
    chunk_size: importance samples decoded at once.
    batch_size: examples per jitted call.
    output_activation: decoder logits to pixels for 'reconstruction_error'.
    desc: progress bar label, or None.

  Returns:
    {score name: float [N]}.
  """
  scores = tuple(available_scores(model) if scores is None else scores)
  unknown = [s for s in scores if s not in SCORES]
  if unknown:
    raise ValueError(f'Unknown scores {unknown}; expected names from {SCORES}.')
  unsupported = [s for s in scores if s not in available_scores(model)]
  if unsupported:
    raise ValueError(f'{type(model).__name__} cannot compute {unsupported}: they need a '
                     "VAE's posterior. Use 'reconstruction_error'.")
  for name, value in (('iwae_samples', iwae_samples), ('elbo_samples', elbo_samples),
                      ('recon_samples', recon_samples)):
    if value < 1:
      raise ValueError(f'{name} must be >= 1, got {value}.')
  result = {}
  if 'reconstruction_error' in scores:
    result['reconstruction_error'] = embedding.reconstruction_error(
        model, variables, images, batch_size=batch_size, output_activation=output_activation,
        desc=None if desc is None else f'{desc}: reconstruction')
  vae_scores = [s for s in scores if s in VAE_SCORES]
  if vae_scores:
    num = max(iwae_samples if 'iwae_nll' in vae_scores else 1,
              elbo_samples if 'negative_elbo' in vae_scores else 1,
              recon_samples if 'reconstruction_probability' in vae_scores else 1)

    @jax.jit
    def fn(variables, x, keys):
      terms = sample_terms(model, variables, x, keys, num_samples=num, chunk_size=chunk_size)
      out = {}
      if 'negative_elbo' in vae_scores:
        out['negative_elbo'] = terms.kl - jnp.mean(terms.log_px_z[:, :elbo_samples], axis=1)
      if 'iwae_nll' in vae_scores:
        log_w = log_importance_weights(terms)[:, :iwae_samples]
        out['iwae_nll'] = -log_mean_exp(log_w)
      if 'reconstruction_probability' in vae_scores:
        out['reconstruction_probability'] = -jnp.mean(terms.log_px_z[:, :recon_samples], axis=1)
      return out

    result.update(common.map_batches(
        functools.partial(fn, variables), images, batch_size=batch_size, key=key,
        desc=None if desc is None else f'{desc}: {num} samples'))
  return {name: result[name] for name in scores}


def threshold_from_normal(normal_scores: np.ndarray, *, quantile: float | None = None,
                          contamination: float | None = None) -> float:
  """A score threshold from scores of normal (validation) data.

  Give exactly one of `quantile` (the threshold is that quantile of the
  normal scores, so about 1 - quantile of normal data is flagged) or
  `contamination` (the expected anomalous fraction c; same as quantile
  1 - c). Quantiles interpolate linearly, as `np.quantile` does by default.
  """
  if (quantile is None) == (contamination is None):
    raise ValueError('Give exactly one of quantile and contamination.')
  if contamination is not None:
    if not 0.0 <= contamination <= 1.0:
      raise ValueError(f'contamination must be in [0, 1], got {contamination}.')
    quantile = 1.0 - contamination
  if not 0.0 <= quantile <= 1.0:
    raise ValueError(f'quantile must be in [0, 1], got {quantile}.')
  return float(np.quantile(np.asarray(normal_scores, np.float64), quantile))


def flag(scores: np.ndarray, threshold: float) -> np.ndarray:
  """bool [N]: True where the score exceeds the threshold (strictly)."""
  return np.asarray(scores) > threshold


def detection_metrics(scores: np.ndarray, is_anomaly: np.ndarray, *,
                      threshold: float | None = None) -> dict[str, float]:
  """ROC-AUC and PR-AUC of scores against labels, anomalies being the positives.

  PR-AUC is the average precision (sklearn's `average_precision_score`, the
  step-wise area, which unlike the trapezoidal one is not optimistic; Davis &
  Goadrich 2006). With `threshold`, also the precision, recall, F1 and false
  positive rate of `flag(scores, threshold)`.
  """
  # scikit-learn is slow to import: only the functions that use it load it.
  from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top
  scores = np.asarray(scores, np.float64)
  is_anomaly = np.asarray(is_anomaly, bool)
  if is_anomaly.all() or not is_anomaly.any():
    raise ValueError('AUCs need both normal and anomalous examples.')
  result = {
      'roc_auc': float(sk_metrics.roc_auc_score(is_anomaly, scores)),
      'pr_auc': float(sk_metrics.average_precision_score(is_anomaly, scores)),
  }
  if threshold is not None:
    flags = flag(scores, threshold)
    result.update(
        threshold=float(threshold),
        precision=float(sk_metrics.precision_score(is_anomaly, flags, zero_division=0)),
        recall=float(sk_metrics.recall_score(is_anomaly, flags, zero_division=0)),
        f1=float(sk_metrics.f1_score(is_anomaly, flags, zero_division=0)),
        false_positive_rate=float(np.mean(flags[~is_anomaly])),
    )
  return result


def one_class_split(images: np.ndarray, labels: np.ndarray, normal_class: int, *,
                    validation_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The images of `normal_class`, split into (train, validation) at random.

  The validation images (a `validation_fraction` of the class, at least one)
  are normal data held out to choose the threshold.
  """
  rows = np.flatnonzero(np.asarray(labels) == normal_class)
  if len(rows) < 2:
    raise ValueError(f'Class {normal_class} has {len(rows)} examples; need at least 2.')
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f'validation_fraction must be in (0, 1), got {validation_fraction}.')
  rows = np.random.default_rng(seed).permutation(rows)
  num_val = max(1, int(round(validation_fraction * len(rows))))
  return images[np.sort(rows[num_val:])], images[np.sort(rows[:num_val])]


def evaluate_scores(val_scores: Mapping[str, np.ndarray], test_scores: Mapping[str, np.ndarray],
                    is_anomaly: np.ndarray, *, quantile: float | None = None,
                    contamination: float | None = None) -> dict[str, dict[str, float]]:
  """`detection_metrics` of every score, its threshold set on the validation scores."""
  return {
      name: detection_metrics(
          test_scores[name], is_anomaly,
          threshold=threshold_from_normal(val_scores[name], quantile=quantile,
                                          contamination=contamination))
      for name in test_scores
  }


def mean_over_classes(per_class: Mapping[Any, Mapping[str, Mapping[str, float]]]
                      ) -> dict[str, dict[str, float]]:
  """{score: {metric: mean over classes}} of {class: {score: {metric: value}}}."""
  classes = list(per_class)
  scores = per_class[classes[0]]
  return {
      score: {metric: float(np.mean([per_class[c][score][metric] for c in classes]))
              for metric in scores[score]}
      for score in scores
  }


def format_table(per_class: Mapping[Any, Mapping[str, Mapping[str, float]]], *,
                 metric: str = 'roc_auc') -> str:
  """A Markdown table of `metric`: one row per class and a last row of means."""
  classes = list(per_class)
  scores = list(per_class[classes[0]])
  lines = ['| class | ' + ' | '.join(scores) + ' |',
           '|---|' + '---|' * len(scores)]
  for c in classes:
    lines.append(f'| {c} | ' + ' | '.join(f'{per_class[c][s][metric]:.3f}' for s in scores)
                 + ' |')
  means = mean_over_classes(per_class)
  lines.append('| mean | ' + ' | '.join(f'{means[s][metric]:.3f}' for s in scores) + ' |')
  return '\n'.join(lines)
