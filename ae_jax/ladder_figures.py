"""The ladder VAE's own figure, kl_per_layer.png: KL(q ‖ p) per stochastic
layer on the test batch (bars) and, from metrics.jsonl, each layer's eval KL
over training (lines). `runner.write_figures` draws it beside the
reconstructions, ancestral samples, top-layer latent map and curves.

References:
  Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016, Fig. 4
  (KL per layer).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import numpy as np

from ae_jax import losses


def layer_kl(model, variables, x: jax.Array, key: jax.Array) -> np.ndarray:
  """Mean KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1})) of each layer over `x`, [L] nats."""
  out = model.apply(variables, x, key)
  return np.array([float(jnp.mean(losses.gaussian_kl_between(qm, qv, pm, pv)))
                   for qm, qv, pm, pv in zip(out.q_mean, out.q_log_var, out.p_mean,
                                             out.p_log_var)])


def _eval_layer_kl_curves(metrics_path: str) -> dict[int, list[tuple[int, float]]]:
  curves: dict[int, list[tuple[int, float]]] = {}
  if not os.path.exists(metrics_path):
    return curves
  with open(metrics_path) as f:
    for line in f:
      record = json.loads(line)
      if record.get('split') != 'eval':
        continue
      for name, value in record.items():
        if name.startswith('kl_layer'):
          curves.setdefault(int(name[len('kl_layer'):]), []).append((record['step'], value))
  return curves


def save_layer_kl(kl_L: np.ndarray, latent_dims, metrics_path: str, path: str, *,
                  title: str = '') -> str:
  """Bars of the per-layer KL and, when metrics_path has eval records, its curves."""
  curves = _eval_layer_kl_curves(metrics_path)
  fig = Figure(figsize=(9.5 if curves else 5, 3.6))
  axes = fig.subplots(1, 2 if curves else 1, squeeze=False)[0]
  names = [f'z{i + 1}\n({d} units)' for i, d in enumerate(latent_dims)]
  axes[0].bar(names, kl_L, color='tab:blue')
  for i, value in enumerate(kl_L):
    axes[0].annotate(f'{value:.1f}', (i, value), ha='center', va='bottom')
  axes[0].set_ylabel('KL (nats)')
  axes[0].set_title('KL per layer, test batch')
  if curves:
    for layer, points in sorted(curves.items()):
      steps, values = zip(*points)
      axes[1].plot(steps, values, marker='o', markersize=3, label=f'z{layer}')
    axes[1].set_xlabel('step')
    axes[1].set_ylabel('eval KL (nats)')
    axes[1].set_title('KL per layer during training')
    axes[1].legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
