"""A sequence VAE for token strings (SMILES, SELFIES): GRU encoder and decoder.

Shape letters: B batch, L token row length (with <bos> and <eos>), T = L - 1
decoder steps, V vocabulary size, E embedding width, H GRU width, Z latent.

Token rows are `[<bos>, t_1, ..., t_n, <eos>, <pad>...]` with the ids of
`ae_jax.molecules.tokenizer` (<pad> 0, <bos> 1, <eos> 2).

The encoder reads the row with a GRU (padding positions leave the state
unchanged) and maps its last state to q(z|x) = N(μ, diag σ²). The decoder is a
GRU whose initial state is tanh(W z + b) and whose input at step t is the
embedding of token t together with z; trained with teacher forcing (the true
previous token is fed), it predicts tokens 1..L-1. `generate` runs the same
decoder on its own samples (greedy or at a temperature).

The GRU input projections of all steps are computed at once before the scan,
so the scan only does the hidden-to-hidden product; the decoder's per-token
projection is a [V, 3H] table, which lets generation run in a `lax.scan`
without calling modules inside it.

References:
  Gómez-Bombarelli et al., "Automatic chemical design using a data-driven
  continuous representation of molecules", ACS Cent. Sci. 2018. Bowman et al.,
  "Generating sentences from a continuous space", CoNLL 2016. Cho et al.,
  "Learning phrase representations using RNN encoder-decoder for statistical
  machine translation", EMNLP 2014 (the GRU).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ae_jax import layers

Array = jax.Array

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


class SequenceVAEOutput(flax.struct.PyTreeNode):
  """Output of a `SequenceVAE` under teacher forcing.

  Attributes:
    logits: [B, T, V] decoder logits of tokens 1..L-1 of the input rows.
    z: [B, Z] reparameterized sample of q(z | x).
    mean: [B, Z] posterior mean.
    log_var: [B, Z] posterior log variance.
  """
  logits: Array
  z: Array
  mean: Array
  log_var: Array


def target_mask(tokens_BxL: Array) -> Array:
  """float32 [B, T]: 1 where token t+1 is a target (a real token or the first <eos>).

  The decoder's input at step t is token t; step t has a target iff that input
  is neither <pad> nor <eos>.
  """
  inputs = tokens_BxL[:, :-1]
  return ((inputs != PAD_ID) & (inputs != EOS_ID)).astype(jnp.float32)


def gru_step(h_BxH: Array, x_proj_Bx3H: Array, kernel_Hx3H: Array, bias_3H: Array) -> Array:
  """One GRU update from a precomputed input projection W_i x + b_i.

  r = σ(x_r + h W_r + b_r), u = σ(x_u + h W_u + b_u),
  n = tanh(x_n + r ⊙ (h W_n + b_n)), h' = (1 − u) ⊙ n + u ⊙ h.
  """
  hidden = h_BxH @ kernel_Hx3H + bias_3H
  x_r, x_u, x_n = jnp.split(x_proj_Bx3H, 3, axis=-1)
  h_r, h_u, h_n = jnp.split(hidden, 3, axis=-1)
  r = jax.nn.sigmoid(x_r + h_r)
  u = jax.nn.sigmoid(x_u + h_u)
  n = jnp.tanh(x_n + r * h_n)
  return (1.0 - u) * n + u * h_BxH


class GRUWeights(nn.Module):
  """The hidden-to-hidden weights of a GRU of width `features` ([H, 3H], [3H])."""
  features: int

  @nn.compact
  def __call__(self) -> tuple[Array, Array]:
    kernel = self.param('hidden_kernel', nn.initializers.orthogonal(),
                        (self.features, 3 * self.features))
    bias = self.param('hidden_bias', nn.initializers.zeros, (3 * self.features,))
    return kernel, bias


def run_gru(x_proj_BxTx3H: Array, h0_BxH: Array, kernel: Array, bias: Array,
            mask_BxT: Array | None = None) -> tuple[Array, Array]:
  """Scans `gru_step` over time; where mask is 0 the state is carried unchanged.

  Returns:
    (states [B, T, H], final state [B, H]).
  """
  xs = jnp.swapaxes(x_proj_BxTx3H, 0, 1)
  ms = None if mask_BxT is None else jnp.swapaxes(mask_BxT, 0, 1)

  def body(h, inputs):
    x_t, m_t = inputs
    h_new = gru_step(h, x_t, kernel, bias)
    if m_t is not None:
      h_new = jnp.where(m_t[:, None] > 0, h_new, h)
    return h_new, h_new

  h_final, hs = jax.lax.scan(body, h0_BxH, (xs, ms))
  return jnp.swapaxes(hs, 0, 1), h_final


class SequenceVAE(nn.Module):
  """GRU encoder to (μ, log σ²), GRU decoder with teacher forcing; see module docstring.

  Attributes:
    family: 'sequence_vae', a VAE of token rows (`ae_jax.molecules`).
    vocab_size: V, the tokenizer's vocabulary size (special tokens included).
    max_length: L, the token row length.
    embed_dim: E.
    encoder_hidden: H of the encoder GRU.
    decoder_hidden: H of the decoder GRU.
    latent_dim: Z.

  References:
    Gómez-Bombarelli et al. 2018 (the chemical VAE); Kingma & Welling 2014.
  """
  family: ClassVar[str] = 'sequence_vae'
  vocab_size: int
  max_length: int
  embed_dim: int = 64
  encoder_hidden: int = 256
  decoder_hidden: int = 256
  latent_dim: int = 64

  def setup(self):
    for name in ('vocab_size', 'max_length', 'embed_dim', 'encoder_hidden',
                 'decoder_hidden', 'latent_dim'):
      if getattr(self, name) <= 0:
        raise ValueError(f'SequenceVAE.{name} must be > 0, got {getattr(self, name)}.')
    self.embed = nn.Embed(self.vocab_size, self.embed_dim)
    self.encoder_input = nn.Dense(3 * self.encoder_hidden)
    self.encoder_weights = GRUWeights(self.encoder_hidden)
    self.mean = nn.Dense(self.latent_dim)
    self.log_var = nn.Dense(self.latent_dim)
    self.latent_to_state = nn.Dense(self.decoder_hidden)
    self.decoder_token_input = nn.Dense(3 * self.decoder_hidden, use_bias=False)
    self.decoder_latent_input = nn.Dense(3 * self.decoder_hidden)
    self.decoder_weights = GRUWeights(self.decoder_hidden)
    self.output = nn.Dense(self.vocab_size)

  def _check_tokens(self, tokens: Array) -> None:
    if tokens.ndim != 2 or tokens.shape[1] != self.max_length:
      raise ValueError(f'Expected token rows [B, max_length={self.max_length}], got shape '
                       f'{tokens.shape}.')
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'Expected integer token ids, got dtype {tokens.dtype}.')

  def encode(self, tokens: Array) -> tuple[Array, Array]:
    """Posterior (mean, log_var), each [B, Z], of token rows [B, L]."""
    self._check_tokens(tokens)
    x_proj = self.encoder_input(self.embed(tokens))
    kernel, bias = self.encoder_weights()
    h0 = jnp.zeros((tokens.shape[0], self.encoder_hidden), x_proj.dtype)
    _, h = run_gru(x_proj, h0, kernel, bias, mask_BxT=(tokens != PAD_ID).astype(jnp.float32))
    return self.mean(h), self.log_var(h)

  def decode(self, z: Array, tokens: Array) -> Array:
    """Teacher-forced logits [B, T, V] of tokens 1..L-1 given z [B, Z] and rows [B, L]."""
    self._check_tokens(tokens)
    inputs = tokens[:, :-1]
    x_proj = (self.decoder_token_input(self.embed(inputs))
              + self.decoder_latent_input(z)[:, None, :])
    kernel, bias = self.decoder_weights()
    hs, _ = run_gru(x_proj, jnp.tanh(self.latent_to_state(z)), kernel, bias)
    return self.output(hs)

  def __call__(self, tokens: Array, key: Array) -> SequenceVAEOutput:
    """Encodes, samples z with `key` (reparameterized) and decodes with teacher forcing."""
    mean, log_var = self.encode(tokens)
    z = layers.reparameterize(key, mean, log_var)
    return SequenceVAEOutput(logits=self.decode(z, tokens), z=z, mean=mean, log_var=log_var)

  def generate(self, z: Array, key: Array, *, temperature: float = 1.0, greedy: bool = False,
               first_token_mask: Array | None = None) -> Array:
    """Token rows [B, L] decoded from codes z [B, Z], starting with <bos>.

    Each step feeds back the token it produced. <pad> and <bos> are never
    produced; after <eos> a row is padded. `first_token_mask` (bool [V])
    restricts the first token (e.g. to atoms; <eos> is excluded there).

    Args:
      z: codes [B, Z].
      key: sampling key (unused when greedy).
      temperature: logits are divided by it before sampling; > 0.
      greedy: take the most likely token instead of sampling.
      first_token_mask: allowed first tokens, or None for any but <eos>.
    """
    if not greedy and temperature <= 0:
      raise ValueError(f'temperature must be > 0 (or greedy=True), got {temperature}.')
    batch = z.shape[0]
    table = self.decoder_token_input(self.embed.embedding)  # [V, 3H]
    z_proj = self.decoder_latent_input(z)
    kernel, bias = self.decoder_weights()
    out_kernel = self.output.variables['params']['kernel']
    out_bias = self.output.variables['params']['bias']
    never = jnp.zeros((self.vocab_size,), bool).at[PAD_ID].set(True).at[BOS_ID].set(True)
    if first_token_mask is None:
      first_allowed = jnp.ones((self.vocab_size,), bool).at[EOS_ID].set(False)
    else:
      first_allowed = jnp.asarray(first_token_mask, bool).at[EOS_ID].set(False)

    def body(carry, t):
      h, prev, done = carry
      h = gru_step(h, table[prev] + z_proj, kernel, bias)
      logits = h @ out_kernel + out_bias
      allowed = ~never & jnp.where(t == 0, first_allowed, True)
      logits = jnp.where(allowed[None, :], logits, -jnp.inf)
      if greedy:
        token = jnp.argmax(logits, axis=-1)
      else:
        token = jax.random.categorical(jax.random.fold_in(key, t), logits / temperature)
      token = jnp.where(done, PAD_ID, token).astype(jnp.int32)
      done = done | (token == EOS_ID)
      return (h, token, done), token

    init = (jnp.tanh(self.latent_to_state(z)), jnp.full((batch,), BOS_ID, jnp.int32),
            jnp.zeros((batch,), bool))
    _, tokens = jax.lax.scan(body, init, jnp.arange(self.max_length - 1))
    return jnp.concatenate([jnp.full((batch, 1), BOS_ID, jnp.int32), tokens.T], axis=1)
