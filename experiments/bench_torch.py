"""The benchmark's models in PyTorch: the same architectures, the same parameter counts.

Used only by `experiments.bench --torch` (needs the optional `bench` extra,
`pip install -e .[bench]`); ae-jax never imports torch. Each `make_step(name,
batch)` returns `(step, num_params)`: `step()` runs one Adam training step on
a resident batch and blocks until it is done, as the jitted ae-jax step does.

The models mirror ae-jax's modules layer for layer (`ae_jax.models`):
  vae        MLPVAE 784-400-(20, 20)-400-784, Bernoulli ELBO.
  conv_ae    ConvAutoencoder: Conv 32, 64 (3x3, stride 2), Dense 16,
             Dense 7*7*64, ConvTranspose 64, 32 (3x3, stride 2), Conv 1 (3x3);
             Bernoulli reconstruction.
  conv_vae   ConvVAE: Conv 32, 64, 128 (4x4, stride 2), Dense 16 + 16,
             Dense 4*4*128, ConvTranspose 64, 32, 1 (4x4, stride 2, cropped
             to 7, 14, 28); Bernoulli ELBO.
  vqvae      VQVAE (64 codes of dimension 16, EMA codebook, decay 0.99):
             Conv 32, 64 (4x4, stride 2), Conv 64 (3x3), two residual blocks
             (3x3 to 32, 1x1 to 64), 1x1 to 16, nearest code, straight
             through; the decoder mirrors it with ConvTranspose 32, 1 (4x4,
             stride 2); MSE plus 0.25 x commitment.
Padding differs only where PyTorch has no 'SAME' (symmetric instead of
TensorFlow's extra row at the end): the same operations and sizes.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _bernoulli_nll(logits, x):
  return F.binary_cross_entropy_with_logits(logits, x, reduction='sum') / x.shape[0]


def _kl(mean, log_var):
  return 0.5 * torch.sum(mean**2 + log_var.exp() - 1.0 - log_var) / mean.shape[0]


class MLPVAE(nn.Module):

  def __init__(self, d=784, h=400, z=20):
    super().__init__()
    self.enc = nn.Linear(d, h)
    self.mean = nn.Linear(h, z)
    self.log_var = nn.Linear(h, z)
    self.dec = nn.Sequential(nn.Linear(z, h), nn.ReLU(), nn.Linear(h, d))

  def loss(self, x):
    x = x.flatten(1)
    h = F.relu(self.enc(x))
    mean, log_var = self.mean(h), self.log_var(h)
    z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
    return _bernoulli_nll(self.dec(z), x) + _kl(mean, log_var)


class ConvAE(nn.Module):

  def __init__(self, z=16):
    super().__init__()
    self.enc = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(),
                             nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(7 * 7 * 64, z))
    self.dec_dense = nn.Linear(z, 7 * 7 * 64)
    self.dec = nn.Sequential(
        nn.ConvTranspose2d(64, 64, 3, 2, 1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
        nn.Conv2d(32, 1, 3, 1, 1))

  def loss(self, x):
    h = F.relu(self.dec_dense(self.enc(x))).view(-1, 64, 7, 7)
    return _bernoulli_nll(self.dec(h), x)


class ConvVAE(nn.Module):

  def __init__(self, z=16):
    super().__init__()
    self.enc = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(),
                             nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
                             nn.Conv2d(64, 128, 4, 2, 2), nn.ReLU(), nn.Flatten())
    self.mean = nn.Linear(4 * 4 * 128, z)
    self.log_var = nn.Linear(4 * 4 * 128, z)
    self.dec_dense = nn.Linear(z, 4 * 4 * 128)
    self.up = nn.ModuleList([nn.ConvTranspose2d(128, 64, 4, 2, 1),
                             nn.ConvTranspose2d(64, 32, 4, 2, 1),
                             nn.ConvTranspose2d(32, 1, 4, 2, 1)])

  def loss(self, x):
    h = self.enc(x)
    mean, log_var = self.mean(h), self.log_var(h)
    z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
    h = F.relu(self.dec_dense(z)).view(-1, 128, 4, 4)
    for i, (up, size) in enumerate(zip(self.up, (7, 14, 28))):
      h = up(h)[:, :, :size, :size]
      if i < 2:
        h = F.relu(h)
    return _bernoulli_nll(h, x) + _kl(mean, log_var)


class _Residual(nn.Module):

  def __init__(self, c=64, r=32, blocks=2):
    super().__init__()
    self.blocks = nn.ModuleList(
        nn.Sequential(nn.ReLU(), nn.Conv2d(c, r, 3, 1, 1), nn.ReLU(), nn.Conv2d(r, c, 1))
        for _ in range(blocks))

  def forward(self, x):
    for block in self.blocks:
      x = x + block(x)
    return F.relu(x)


class VQVAE(nn.Module):

  def __init__(self, k=64, d=16, c=64, decay=0.99):
    super().__init__()
    self.enc = nn.Sequential(nn.Conv2d(1, c // 2, 4, 2, 1), nn.ReLU(),
                             nn.Conv2d(c // 2, c, 4, 2, 1), nn.ReLU(),
                             nn.Conv2d(c, c, 3, 1, 1), _Residual(c), nn.Conv2d(c, d, 1))
    self.dec = nn.Sequential(nn.Conv2d(d, c, 3, 1, 1), _Residual(c),
                             nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.ReLU(),
                             nn.ConvTranspose2d(c // 2, 1, 4, 2, 1))
    self.decay = decay
    self.register_buffer('codebook', torch.randn(k, d))
    self.register_buffer('cluster_size', torch.zeros(k))
    self.register_buffer('embed_sum', torch.zeros(k, d))

  def loss(self, x):
    z_e = self.enc(x).permute(0, 2, 3, 1)
    flat = z_e.reshape(-1, z_e.shape[-1])
    distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T
                 + self.codebook.pow(2).sum(1))
    idx = distances.argmin(1)
    z_q = self.codebook[idx].view_as(z_e)
    with torch.no_grad():  # The EMA codebook update (Laplace-smoothed counts).
      onehot = F.one_hot(idx, self.codebook.shape[0]).type(flat.dtype)
      self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
      self.embed_sum.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
      n = self.cluster_size.sum()
      smoothed = (self.cluster_size + 1e-5) / (n + self.codebook.shape[0] * 1e-5) * n
      self.codebook.copy_(self.embed_sum / smoothed[:, None])
    commitment = F.mse_loss(z_e, z_q.detach())
    quantized = (z_e + (z_q - z_e).detach()).permute(0, 3, 1, 2)
    out = self.dec(quantized)
    return F.mse_loss(out, x, reduction='sum') / x.shape[0] + 0.25 * commitment


def device() -> str:
  """'cuda' when PyTorch sees a GPU, else 'cpu'."""
  return 'cuda' if torch.cuda.is_available() else 'cpu'


MODELS = {'vae': MLPVAE, 'conv_ae': ConvAE, 'conv_vae': ConvVAE, 'vqvae': VQVAE}


def make_step(name: str, batch: int, precision: str = 'float32', seed: int = 0):
  """(step, number of trainable parameters) of config `name` at batch size `batch`.

  precision='bfloat16' runs the forward pass and its gradient under
  `torch.autocast(dtype=torch.bfloat16)` (products in bfloat16, parameters
  and optimizer float32), the counterpart of the ae-jax step's bfloat16
  matrix products (`experiments.bench.with_precision`).
  """
  if precision not in ('float32', 'bfloat16'):
    raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}.")
  torch.manual_seed(seed)
  where = device()
  model = MODELS[name]().to(where)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  x = torch.rand(batch, 1, 28, 28, device=where)
  if name != 'vqvae':
    x = (x < 0.5).float()

  autocast = torch.autocast(where, dtype=torch.bfloat16, enabled=precision == 'bfloat16')

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = model.loss(x)
    loss.backward()
    optimizer.step()
    return loss.item()  # Blocks until the step is done, as block_until_ready does.

  return step, sum(p.numel() for p in model.parameters())
