"""Sampling, reconstruction and interpolation with a trained `SequenceVAE`.

Everything runs jitted in fixed-size batches (the last one padded), so one
compilation serves a whole set. Shape letters: N molecules, L token row
length, Z latent.

References:
  Gómez-Bombarelli et al., "Automatic chemical design using a data-driven
  continuous representation of molecules", ACS Cent. Sci. 2018 (sampling the
  prior, reconstruction accuracy, latent interpolation between molecules).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import models
from ae_jax.molecules import metrics as metrics_lib
from ae_jax.molecules import tokenizer as tokenizer_lib

Variables = dict[str, Any]


def _padded_batches(array: np.ndarray, batch_size: int):
  for start in range(0, len(array), batch_size):
    part = np.asarray(array[start:start + batch_size])
    real = len(part)
    if real < batch_size:
      part = np.concatenate([part, np.repeat(part[:1], batch_size - real, axis=0)])
    yield start, real, part


def encode_means(model: models.SequenceVAE, variables: Variables, tokens_NxL: np.ndarray, *,
                 batch_size: int = 500) -> np.ndarray:
  """Posterior means [N, Z] of token rows."""
  fn = jax.jit(lambda v, x: model.apply(v, x, method=model.encode)[0])
  out = [np.asarray(fn(variables, jnp.asarray(part)))[:real]
         for _, real, part in _padded_batches(tokens_NxL, batch_size)]
  return np.concatenate(out)


def decode_codes(model: models.SequenceVAE, variables: Variables, z_NxZ: np.ndarray,
                 key: jax.Array, *, tok: tokenizer_lib.Tokenizer, temperature: float = 1.0,
                 greedy: bool = False, batch_size: int = 500) -> np.ndarray:
  """Token rows [N, L] generated from codes z [N, Z].

  The batch that starts at row s samples with `fold_in(key, s)`.

  The first token is restricted to the tokenizer's `first_token_mask` (atoms).
  """
  first_mask = jnp.asarray(tok.first_token_mask())

  @jax.jit
  def fn(v, z, k):
    return model.apply(v, z, k, temperature=temperature, greedy=greedy,
                       first_token_mask=first_mask, method=model.generate)

  out = []
  for start, real, part in _padded_batches(np.asarray(z_NxZ, np.float32), batch_size):
    rows = fn(variables, jnp.asarray(part), jax.random.fold_in(key, start))
    out.append(np.asarray(rows)[:real])
  return np.concatenate(out)


def sample_smiles(model: models.SequenceVAE, variables: Variables, num: int, key: jax.Array,
                  *, tok: tokenizer_lib.Tokenizer, temperature: float = 1.0,
                  batch_size: int = 500) -> tuple[list[str], list[str]]:
  """`num` molecules from the prior z ~ N(0, I).

  Returns:
    (the generated strings in the tokenizer's representation, their SMILES;
    for SELFIES the SMILES come from `selfies.decoder`).
  """
  z_key, sample_key = jax.random.split(key)
  z = np.asarray(jax.random.normal(z_key, (num, model.latent_dim)))
  rows = decode_codes(model, variables, z, sample_key, tok=tok, temperature=temperature,
                      batch_size=batch_size)
  strings = [tok.decode(r) for r in rows]
  return strings, [tok.to_smiles(s) for s in strings]


def reconstruction_accuracy(model: models.SequenceVAE, variables: Variables,
                            tokens_NxL: np.ndarray, smiles: list[str], *,
                            tok: tokenizer_lib.Tokenizer, batch_size: int = 500
                            ) -> tuple[dict[str, float], list[str]]:
  """Greedy decoding of the posterior means of test molecules.

  Returns:
    ({'recon_exact': fraction whose decoded string equals the input string,
      'recon_molecule': fraction whose decoded SMILES is the same molecule
      (same canonical SMILES), 'recon_valid': fraction decoded to a valid
      molecule}, the decoded SMILES).
  """
  means = encode_means(model, variables, tokens_NxL, batch_size=batch_size)
  rows = decode_codes(model, variables, means, jax.random.key(0), tok=tok, greedy=True,
                      batch_size=batch_size)
  exact = np.mean([np.array_equal(a, b) for a, b in zip(rows, tokens_NxL)])
  decoded = tok.decode_smiles(rows)
  same, valid = [], []
  for original, new in zip(smiles, decoded):
    c_new = metrics_lib.canonical(new)
    valid.append(c_new is not None)
    same.append(c_new is not None and c_new == metrics_lib.canonical(original))
  return ({'recon_exact': float(exact), 'recon_molecule': float(np.mean(same)),
           'recon_valid': float(np.mean(valid))}, decoded)


def interpolate(model: models.SequenceVAE, variables: Variables, smiles_a: str, smiles_b: str,
                *, tok: tokenizer_lib.Tokenizer, num_steps: int = 8) -> list[str]:
  """SMILES greedily decoded at `num_steps` evenly spaced points from μ(a) to μ(b)."""
  if num_steps < 2:
    raise ValueError(f'num_steps must be >= 2, got {num_steps}.')
  tokens = np.stack([tok.encode(smiles_a), tok.encode(smiles_b)])
  means = encode_means(model, variables, tokens, batch_size=2)
  alphas = np.linspace(0.0, 1.0, num_steps)[:, None]
  z = (1.0 - alphas) * means[0] + alphas * means[1]
  rows = decode_codes(model, variables, z, jax.random.key(0), tok=tok, greedy=True,
                      batch_size=num_steps)
  return tok.decode_smiles(rows)
