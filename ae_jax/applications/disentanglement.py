"""Disentanglement metrics against known factors of variation.

Five scores, each written from its paper (disentanglement_lib, Locatello et
al. 2019, was read for the discretisation convention only):

- `beta_vae_score` (Higgins et al. 2017): accuracy of a linear classifier
  that names which factor was held fixed from the mean absolute difference
  |z1 - z2| over L pairs sharing that factor's value;
- `factor_vae_score` (Kim & Mnih 2018): accuracy of a majority-vote classifier
  from the argmin over dimensions of the variance of scale-normalised codes,
  over L examples sharing one factor's value, to that factor;
- `mig` (Chen et al. 2018): mutual information gap, per factor the gap
  between the two latents most informative about it over its entropy;
- `sap` (Kumar et al. 2018): separated attribute predictability, per factor
  the gap between the two latents that alone predict it best;
- `dci` (Eastwood & Williams 2018): disentanglement, completeness and
  informativeness from the feature importances of a regressor per factor.

The representation of an image is the encoder mean (`representation_table`
embeds a whole data set once). Because `ae_jax.data.shapes` is a full factorial
grid, every metric reads codes from that table by row instead of encoding
fresh samples: the samples are the same as in the papers' protocols, the cost
is one pass of the encoder.

MI is estimated as in Locatello et al. 2019: each latent is discretised into
20 equal-width bins over its range and the MI of two discrete variables is
computed from their contingency table.

Shape letters: N examples, Z latent dimensions, K factors, L examples per
BetaVAE/FactorVAE vote.

References:
  Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a
  Constrained Variational Framework", ICLR 2017 (Sec. 3, BetaVAE metric).
  Kim & Mnih, "Disentangling by Factorising", ICML 2018,
  https://arxiv.org/abs/1802.05983 (Sec. 4, FactorVAE metric).
  Chen, Li, Grosse & Duvenaud, "Isolating Sources of Disentanglement in
  Variational Autoencoders", NeurIPS 2018, https://arxiv.org/abs/1802.04942
  (Sec. 5, MIG).
  Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled
  Latent Concepts from Unlabeled Observations", ICLR 2018,
  https://arxiv.org/abs/1711.00848 (Sec. 3, SAP).
  Eastwood & Williams, "A Framework for the Quantitative Evaluation of
  Disentangled Representations", ICLR 2018 (Sec. 2, DCI).
  Locatello et al., "Challenging Common Assumptions in the Unsupervised
  Learning of Disentangled Representations", ICML 2019 (the 20-bin
  histogram discretisation).
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np

from ae_jax.applications import common
from ae_jax.applications import embedding

SCORES = ('beta_vae', 'factor_vae', 'mig', 'sap', 'dci_disentanglement')


class FactorData(Protocol):
  """What the intervention-based scores need of a data set (e.g. `shapes.Shapes`)."""
  factor_sizes: tuple[int, ...]
  factors: np.ndarray

  def sample_with_fixed_factor(self, rng: np.random.Generator, num: int, factor: int,
                               value: int | None = None) -> np.ndarray:
    ...


@functools.partial(jax.jit, static_argnums=0)
def _posterior_mean(model: nn.Module, variables: common.Variables, x: jax.Array) -> jax.Array:
  return model.apply(variables, x, method='encode')[0]


def representation_table(model: nn.Module, variables: common.Variables, images: np.ndarray,
                         *, batch_size: int = 512) -> np.ndarray:
  """Codes float32 [N, Z] of all `images`: the posterior mean of a VAE.

  Other ae_jax models give their `embedding.embed` code (z of an autoencoder).
  For a VAE the jitted encoder takes the variables as an argument, so models
  of one architecture share one compilation.
  """
  if embedding.code_family(model) != 'vae':
    return embedding.embed(model, variables, images, batch_size=batch_size)
  return common.map_batches(functools.partial(_posterior_mean, model, variables), images,
                            batch_size=batch_size)


# ----------------------------------------------------------------------------
# Discrete information theory.


def discretize(codes_NxZ: np.ndarray, *, num_bins: int = 20) -> np.ndarray:
  """Bin index int [N, Z] of each code in `num_bins` equal-width bins of its range.

  A constant dimension falls into a single bin.
  """
  codes = np.asarray(codes_NxZ, np.float64)
  if codes.ndim != 2:
    raise ValueError(f'codes must be [N, Z], got shape {codes.shape}.')
  out = np.zeros(codes.shape, np.int64)
  for j in range(codes.shape[1]):
    lo, hi = codes[:, j].min(), codes[:, j].max()
    if hi > lo:
      edges = np.linspace(lo, hi, num_bins + 1)
      # Interior edges only: the minimum goes to bin 0 and the maximum to the last.
      out[:, j] = np.digitize(codes[:, j], edges[1:-1])
  return out


def entropy(labels_N: np.ndarray) -> float:
  """H(v) in nats of a discrete variable from its empirical distribution."""
  _, counts = np.unique(np.asarray(labels_N), return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def mutual_information(a_N: np.ndarray, b_N: np.ndarray) -> float:
  """I(a; b) in nats of two discrete variables from their contingency table."""
  _, a = np.unique(np.asarray(a_N), return_inverse=True)
  _, b = np.unique(np.asarray(b_N), return_inverse=True)
  joint = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(joint, (a, b), 1.0)
  joint /= joint.sum()
  outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
  nonzero = joint > 0
  return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])))


def mutual_information_matrix(discrete_codes_NxZ: np.ndarray, factors_NxK: np.ndarray
                              ) -> np.ndarray:
  """I(z_j; v_k) in nats, [Z, K]."""
  z, v = np.asarray(discrete_codes_NxZ), np.asarray(factors_NxK)
  return np.array([[mutual_information(z[:, j], v[:, k]) for k in range(v.shape[1])]
                   for j in range(z.shape[1])])


def _top2_gap(scores_ZxK: np.ndarray) -> np.ndarray:
  """Per column, the largest entry minus the second largest, [K]."""
  top = np.sort(scores_ZxK, axis=0)[::-1]
  if len(top) < 2:
    return top[0]
  return top[0] - top[1]


# ----------------------------------------------------------------------------
# MIG.


def mig(codes_NxZ: np.ndarray, factors_NxK: np.ndarray, *, num_bins: int = 20
        ) -> dict[str, Any]:
  """Mutual information gap (Chen et al. 2018, Eq. 6).

  MIG = (1/K) Σ_k [I(z_{j(k)}; v_k) - max_{j ≠ j(k)} I(z_j; v_k)] / H(v_k),
  j(k) = argmax_j I(z_j; v_k), with each z_j discretised (`discretize`).
  In [0, 1]: 1 when each factor is captured by one latent and by no other.

  Args:
    codes_NxZ: representations of N examples.
    factors_NxK: their discrete factors.
    num_bins: bins per latent.

  Returns:
    {'mig': float, 'per_factor': [K], 'mutual_information': [Z, K] nats}.
  """
  factors = np.asarray(factors_NxK)
  mi = mutual_information_matrix(discretize(codes_NxZ, num_bins=num_bins), factors)
  entropies = np.array([entropy(factors[:, k]) for k in range(factors.shape[1])])
  per_factor = _top2_gap(mi) / np.maximum(entropies, 1e-12)
  return {'mig': float(np.mean(per_factor)), 'per_factor': per_factor,
          'mutual_information': mi}


# ----------------------------------------------------------------------------
# SAP.


def _binned_classifier_accuracy(z_train: np.ndarray, v_train: np.ndarray, z_test: np.ndarray,
                                v_test: np.ndarray, num_bins: int) -> float:
  """Balanced test accuracy of thresholding one latent: each of its bins predicts
  the most frequent training class in it (empty bins: the overall majority)."""
  lo, hi = z_train.min(), z_train.max()
  classes, v_idx = np.unique(v_train, return_inverse=True)
  if hi > lo:
    edges = np.linspace(lo, hi, num_bins + 1)[1:-1]
    bins_train, bins_test = np.digitize(z_train, edges), np.digitize(z_test, edges)
  else:
    bins_train, bins_test = np.zeros(len(z_train), int), np.zeros(len(z_test), int)
  counts = np.zeros((num_bins, len(classes)))
  np.add.at(counts, (bins_train, v_idx), 1.0)
  majority = np.argmax(counts.sum(0))
  table = np.where(counts.sum(1) > 0, np.argmax(counts, 1), majority)
  predicted = classes[table[bins_test]]
  recalls = [np.mean(predicted[v_test == c] == c) for c in np.unique(v_test)]
  return float(np.mean(recalls))


def sap(codes_train_NxZ: np.ndarray, factors_train_NxK: np.ndarray,
        codes_test_NxZ: np.ndarray, factors_test_NxK: np.ndarray, *,
        discrete_factors: Sequence[bool], num_bins: int = 20) -> dict[str, Any]:
  """Separated attribute predictability (Kumar et al. 2018, Sec. 3).

  A score matrix S[j, k] says how well latent j alone predicts factor k: for a
  continuous (here: ordinal) factor the R² of a linear fit, i.e. the squared
  Pearson correlation over all examples; for a discrete (categorical) factor
  the balanced test accuracy of a threshold classifier on z_j (its `num_bins`
  equal-width bins each vote for the training majority). SAP is the mean over
  factors of the gap between the top two entries of each column.

  Args:
    codes_train_NxZ, factors_train_NxK: the classifiers' training examples.
    codes_test_NxZ, factors_test_NxK: their test examples (R² uses the union).
    discrete_factors: [K] True for categorical factors.
    num_bins: thresholds of the 1-D classifier.

  Returns:
    {'sap': float, 'per_factor': [K], 'score_matrix': [Z, K]}.
  """
  z_tr, v_tr = np.asarray(codes_train_NxZ, np.float64), np.asarray(factors_train_NxK)
  z_te, v_te = np.asarray(codes_test_NxZ, np.float64), np.asarray(factors_test_NxK)
  if len(discrete_factors) != v_tr.shape[1]:
    raise ValueError(f'discrete_factors has {len(discrete_factors)} entries for '
                     f'{v_tr.shape[1]} factors.')
  z_all, v_all = np.concatenate([z_tr, z_te]), np.concatenate([v_tr, v_te]).astype(np.float64)
  scores = np.zeros((z_tr.shape[1], v_tr.shape[1]))
  for k, discrete in enumerate(discrete_factors):
    for j in range(z_tr.shape[1]):
      if discrete:
        scores[j, k] = _binned_classifier_accuracy(z_tr[:, j], v_tr[:, k], z_te[:, j],
                                                   v_te[:, k], num_bins)
      else:
        z, v = z_all[:, j] - z_all[:, j].mean(), v_all[:, k] - v_all[:, k].mean()
        denominator = np.sum(z * z) * np.sum(v * v)
        scores[j, k] = np.sum(z * v) ** 2 / denominator if denominator > 1e-12 else 0.0
  per_factor = _top2_gap(scores)
  return {'sap': float(np.mean(per_factor)), 'per_factor': per_factor,
          'score_matrix': scores}


# ----------------------------------------------------------------------------
# DCI.


def _normalized_entropy(p_M: np.ndarray, base: int) -> float:
  p = p_M[p_M > 0]
  return float(-np.sum(p * np.log(p)) / np.log(base)) if base > 1 else 0.0


def dci(codes_train_NxZ: np.ndarray, factors_train_NxK: np.ndarray,
        codes_test_NxZ: np.ndarray, factors_test_NxK: np.ndarray, *,
        num_trees: int = 30, max_depth: int | None = 8, seed: int = 0) -> dict[str, Any]:
  """Disentanglement, completeness and informativeness (Eastwood & Williams 2018).

  One random-forest classifier per factor (the paper's second regressor;
  scikit-learn's `RandomForestClassifier` with `num_trees` trees) predicts
  v_k from z; its impurity-based feature importances, normalised to sum to 1,
  fill column k of the relative importance matrix R [Z, K]. Then

    D_j = 1 - H_K(P_j.),  P_jk = R_jk / Σ_k R_jk,    D = Σ_j ρ_j D_j,  ρ_j = Σ_k R_jk / Σ R;
    C_k = 1 - H_Z(P̃_.k),  P̃_jk = R_jk / Σ_j R_jk,   C = (1/K) Σ_k C_k;
    I   = mean over factors of the test accuracy of the classifiers,

  with entropies H_K, H_Z in base K and Z. A representation whose latents are
  all constant carries no importance: D = C = 0 there.

  Args:
    codes_train_NxZ, factors_train_NxK: training examples of the classifiers.
    codes_test_NxZ, factors_test_NxK: test examples (informativeness).
    num_trees, max_depth: forest size (kept small: seconds on a CPU).
    seed: the forests' random state.

  Returns:
    {'disentanglement', 'completeness', 'informativeness': floats,
     'importance_matrix': [Z, K]}.
  """
  z_tr, v_tr = np.asarray(codes_train_NxZ, np.float64), np.asarray(factors_train_NxK)
  z_te, v_te = np.asarray(codes_test_NxZ, np.float64), np.asarray(factors_test_NxK)
  num_latents, num_factors = z_tr.shape[1], v_tr.shape[1]
  importance = np.zeros((num_latents, num_factors))
  accuracies = []
  for k in range(num_factors):
    from sklearn import ensemble  # pylint: disable=g-import-not-at-top
    forest = ensemble.RandomForestClassifier(n_estimators=num_trees, max_depth=max_depth,
                                             random_state=seed, n_jobs=1)
    forest.fit(z_tr, v_tr[:, k])
    weights = np.nan_to_num(forest.feature_importances_)
    if weights.sum() > 0:
      importance[:, k] = weights / weights.sum()
    accuracies.append(float(np.mean(forest.predict(z_te) == v_te[:, k])))
  total = importance.sum()
  if total <= 0:
    return {'disentanglement': 0.0, 'completeness': 0.0,
            'informativeness': float(np.mean(accuracies)), 'importance_matrix': importance}
  row_sums = importance.sum(1)
  d_per_latent = np.array([
      1.0 - _normalized_entropy(importance[j] / row_sums[j], num_factors)
      if row_sums[j] > 0 else 0.0 for j in range(num_latents)])
  disentanglement = float(np.sum(row_sums / total * d_per_latent))
  col_sums = importance.sum(0)
  completeness = float(np.mean([
      1.0 - _normalized_entropy(importance[:, k] / col_sums[k], num_latents)
      if col_sums[k] > 0 else 0.0 for k in range(num_factors)]))
  return {'disentanglement': disentanglement, 'completeness': completeness,
          'informativeness': float(np.mean(accuracies)), 'importance_matrix': importance}


# ----------------------------------------------------------------------------
# Intervention-based scores: BetaVAE and FactorVAE.


def _beta_vae_points(codes: np.ndarray, data: FactorData, rng: np.random.Generator,
                     num_points: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  features, labels = [], []
  num_factors = len(data.factor_sizes)
  for _ in range(num_points):
    k = int(rng.integers(num_factors))
    # L pairs; within each pair factor k is shared, the other factors differ.
    first = data.sample_with_fixed_factor(rng, batch_size, k, value=None)
    first_factors = np.asarray(data.factors)[first]
    second_factors = np.stack([rng.integers(0, s, batch_size) for s in data.factor_sizes], 1)
    second_factors[:, k] = first_factors[:, k]
    second = np.ravel_multi_index(tuple(second_factors.T), data.factor_sizes)
    features.append(np.mean(np.abs(codes[first] - codes[second]), axis=0))
    labels.append(k)
  return np.stack(features), np.array(labels)


def beta_vae_score(codes_NxZ: np.ndarray, data: FactorData, *, seed: int = 0,
                   num_train: int = 5000, num_eval: int = 2000, batch_size: int = 64
                   ) -> dict[str, float]:
  """BetaVAE disentanglement score (Higgins et al. 2017, Sec. 3).

  Each point: draw a factor k uniformly; draw L = `batch_size` pairs of
  images (x1_l, x2_l) whose factor k agrees and whose other factors are
  independent; the feature is (1/L) Σ_l |z(x1_l) - z(x2_l)| and the label k.
  A linear classifier (logistic regression on standardised features) is
  trained on `num_train` points; the score is its accuracy on `num_eval`
  fresh points. Chance is 1/K.

  Args:
    codes_NxZ: the representation of every row of `data` (rows are indexed
      by `data.sample_with_fixed_factor`).
    data: the factorial data set.
    seed: numpy seed of the sampling.
    num_train, num_eval, batch_size: the protocol's sizes.

  Returns:
    {'train_accuracy', 'eval_accuracy'}.
  """
  codes = np.asarray(codes_NxZ, np.float64)
  rng = np.random.default_rng(seed)
  x_train, y_train = _beta_vae_points(codes, data, rng, num_train, batch_size)
  x_eval, y_eval = _beta_vae_points(codes, data, rng, num_eval, batch_size)
  # pylint: disable-next=g-import-not-at-top
  from sklearn import linear_model, pipeline, preprocessing
  classifier = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                      linear_model.LogisticRegression(max_iter=2000))
  classifier.fit(x_train, y_train)
  return {'train_accuracy': float(classifier.score(x_train, y_train)),
          'eval_accuracy': float(classifier.score(x_eval, y_eval))}


def _factor_vae_votes(codes: np.ndarray, data: FactorData, rng: np.random.Generator,
                      num_votes: int, batch_size: int, scale: np.ndarray,
                      active: np.ndarray) -> np.ndarray:
  """[num_votes, 2] rows (argmin dimension among `active`, fixed factor)."""
  votes = np.zeros((num_votes, 2), np.int64)
  num_factors = len(data.factor_sizes)
  for n in range(num_votes):
    k = int(rng.integers(num_factors))
    rows = data.sample_with_fixed_factor(rng, batch_size, k, value=None)
    variances = np.var(codes[rows][:, active] / scale[active], axis=0, ddof=1)
    votes[n] = np.argmin(variances), k
  return votes


def factor_vae_score(codes_NxZ: np.ndarray, data: FactorData, *, seed: int = 0,
                     num_train: int = 5000, num_eval: int = 2000, batch_size: int = 64,
                     prune_variance: float = 0.05) -> dict[str, Any]:
  """FactorVAE disentanglement score (Kim & Mnih 2018, Sec. 4).

  Each latent is divided by its standard deviation over the whole data set.
  Latents whose variance over the data is below `prune_variance` are
  collapsed (they encode nothing) and left out, as Kim & Mnih do. Each vote:
  draw a factor k, fix it to a random value, draw L = `batch_size` images
  with the other factors free, and vote (argmin_j Var[z_j / s_j], k). The
  classifier maps each dimension j to the factor it got most votes for
  (majority vote); the score is its accuracy on `num_eval` fresh votes.
  With no active latent the score is 0.

  Args:
    codes_NxZ: the representation of every row of `data`.
    data: the factorial data set.
    seed: numpy seed.
    num_train, num_eval: votes to fit and to score the classifier.
    batch_size: L, images per vote.
    prune_variance: variance threshold of collapsed latents.

  Returns:
    {'train_accuracy', 'eval_accuracy', 'num_active': int,
     'votes': [Z_active, K] training vote counts}.
  """
  codes = np.asarray(codes_NxZ, np.float64)
  variance = codes.var(axis=0)
  active = np.flatnonzero(variance >= prune_variance)
  num_factors = len(data.factor_sizes)
  if len(active) == 0:
    return {'train_accuracy': 0.0, 'eval_accuracy': 0.0, 'num_active': 0,
            'votes': np.zeros((0, num_factors), np.int64)}
  scale = np.sqrt(variance)
  rng = np.random.default_rng(seed)
  train = _factor_vae_votes(codes, data, rng, num_train, batch_size, scale, active)
  evals = _factor_vae_votes(codes, data, rng, num_eval, batch_size, scale, active)
  counts = np.zeros((len(active), num_factors), np.int64)
  np.add.at(counts, (train[:, 0], train[:, 1]), 1)
  predict = np.argmax(counts, axis=1)
  return {'train_accuracy': float(np.sum(counts.max(1)) / num_train),
          'eval_accuracy': float(np.mean(predict[evals[:, 0]] == evals[:, 1])),
          'num_active': int(len(active)), 'votes': counts}


# ----------------------------------------------------------------------------
# All five.


def evaluate(codes_NxZ: np.ndarray, data: FactorData, *,
             discrete_factors: Sequence[bool] | None = None, seed: int = 0,
             num_train: int = 5000, num_eval: int = 2000, batch_size: int = 64,
             test_fraction: float = 0.2, num_bins: int = 20, dci_num_trees: int = 30
             ) -> dict[str, Any]:
  """All five scores of a representation of every row of `data`.

  MIG uses every row (the uniform distribution over the factor grid); SAP and
  DCI split the rows once, at random, into train and test (`test_fraction`);
  BetaVAE and FactorVAE draw their own interventions.

  Args:
    codes_NxZ: representation of every row of `data` (`representation_table`).
    data: the factorial data set (`ae_jax.data.shapes.make_shapes()`).
    discrete_factors: [K] categorical factors for SAP; default: factor 0 only
      (the shape, for `shapes`).
    seed: numpy seed of every sampling step.
    num_train, num_eval, batch_size: BetaVAE / FactorVAE protocol sizes.
    test_fraction: held-out share for SAP and DCI.
    num_bins: histogram bins of MIG and of SAP's threshold classifier.
    dci_num_trees: trees of each DCI random forest.

  Returns:
    {'beta_vae', 'factor_vae', 'mig', 'sap', 'dci_disentanglement',
     'dci_completeness', 'dci_informativeness': floats, 'details': {...}}.
  """
  codes = np.asarray(codes_NxZ, np.float64)
  factors = np.asarray(data.factors)
  if len(codes) != len(factors):
    raise ValueError(f'codes has {len(codes)} rows, the data set {len(factors)}.')
  if discrete_factors is None:
    discrete_factors = [k == 0 for k in range(factors.shape[1])]
  order = np.random.default_rng(seed).permutation(len(codes))
  num_test = int(round(test_fraction * len(codes)))
  test, train = order[:num_test], order[num_test:]
  beta = beta_vae_score(codes, data, seed=seed, num_train=num_train, num_eval=num_eval,
                        batch_size=batch_size)
  factor = factor_vae_score(codes, data, seed=seed, num_train=num_train, num_eval=num_eval,
                            batch_size=batch_size)
  mig_result = mig(codes, factors, num_bins=num_bins)
  sap_result = sap(codes[train], factors[train], codes[test], factors[test],
                   discrete_factors=discrete_factors, num_bins=num_bins)
  dci_result = dci(codes[train], factors[train], codes[test], factors[test],
                   num_trees=dci_num_trees, seed=seed)
  return {
      'beta_vae': beta['eval_accuracy'],
      'factor_vae': factor['eval_accuracy'],
      'mig': mig_result['mig'],
      'sap': sap_result['sap'],
      'dci_disentanglement': dci_result['disentanglement'],
      'dci_completeness': dci_result['completeness'],
      'dci_informativeness': dci_result['informativeness'],
      'details': {
          'beta_vae_train_accuracy': beta['train_accuracy'],
          'factor_vae_train_accuracy': factor['train_accuracy'],
          'factor_vae_num_active': factor['num_active'],
          'mig_per_factor': mig_result['per_factor'],
          'mutual_information': mig_result['mutual_information'],
          'sap_per_factor': sap_result['per_factor'],
          'dci_importance_matrix': dci_result['importance_matrix'],
      },
  }
