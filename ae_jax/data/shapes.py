"""A dSprites-like data set of 2-D shapes with known generative factors.

Every combination of five factors is rendered once, as a binary 32x32 image,
by rasterising the shape's implicit equation at the pixel centres in numpy:
no file, no network, no random numbers, identical on every machine.

| k | factor      | size | values                                              |
|---|-------------|------|-----------------------------------------------------|
| 0 | shape       | 3    | square, ellipse (axes 1 : 0.5), heart               |
| 1 | scale       | 4    | half-size 4.0, 5.0, 6.0, 7.0 pixels                 |
| 2 | orientation | 8    | 0, 45, ..., 315 degrees (counter-clockwise)         |
| 3 | x position  | 8    | centre column 10.5, 12.07, ..., 21.5 (pixel units)  |
| 4 | y position  | 8    | centre row, the same values                         |

3 x 4 x 8 x 8 x 8 = 6,144 images, in row-major factor order: image n has the
factor indices `np.unravel_index(n, FACTOR_SIZES)`, so `index_of` is a
`ravel_multi_index`. As in dSprites, orientation is not identifiable from the
image for every shape: a square looks the same after 90 degrees and an
ellipse after 180, so only the heart shows all eight orientations.

The split-free design is the one the disentanglement metrics expect: they
draw factor values, look the images up (`sample_factors`,
`sample_with_fixed_factor`) and read the codes from a table of the
representation of all 6,144 images.

>>> from ae_jax.data import shapes
>>> data = shapes.make_shapes()
>>> data.images.shape, data.factors.shape, data.factor_sizes
((6144, 32, 32, 1), (6144, 5), (3, 4, 8, 8, 8))

Shape letters: N images, K factors, H, W image size.

References:
  Matthey, Higgins, Hassabis & Lerchner, "dSprites: Disentanglement testing
  Sprites dataset", 2017, https://github.com/deepmind/dsprites-dataset
  (the design: shape x scale x orientation x position, every combination once).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

FACTOR_NAMES = ('shape', 'scale', 'orientation', 'x', 'y')
FACTOR_SIZES = (3, 4, 8, 8, 8)
SHAPE_NAMES = ('square', 'ellipse', 'heart')
IMAGE_SIZE = 32

_HALF_SIZES = np.array([4.0, 5.0, 6.0, 7.0])
_ANGLES = np.arange(8) * (2.0 * np.pi / 8)
# Centres keep the largest rotated square (half-diagonal 7 * sqrt(2) < 9.9)
# inside the 32-pixel frame.
_POSITIONS = np.linspace(10.5, 21.5, 8)


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether the points (u, v), in the shape's own unit frame, lie in the shape."""
  if shape == 0:  # Square of half-side 1.
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0
  if shape == 1:  # Ellipse with semi-axes 1 (along u) and 0.5.
    return u ** 2 + (v / 0.5) ** 2 <= 1.0
  # Heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 with y pointing up; its extent is
  # about x in [-1.14, 1.14], y in [-1, 1.25]: shrink it to fit the unit box
  # and centre it vertically.
  x, y = 1.14 * u, -1.14 * v + 0.12
  return (x ** 2 + y ** 2 - 1.0) ** 3 - x ** 2 * y ** 3 <= 0.0


def render(factors_NxK: np.ndarray) -> np.ndarray:
  """Binary images float32 [N, 32, 32, 1] of factor index rows [N, 5]."""
  factors = np.asarray(factors_NxK, np.int64).reshape(-1, len(FACTOR_SIZES))
  if np.any(factors < 0) or np.any(factors >= np.array(FACTOR_SIZES)):
    raise ValueError(f'Factor indices must lie in [0, {FACTOR_SIZES}).')
  centres = np.arange(IMAGE_SIZE) + 0.5
  rows, cols = np.meshgrid(centres, centres, indexing='ij')  # [H, W]
  half = _HALF_SIZES[factors[:, 1]][:, None, None]
  angle = _ANGLES[factors[:, 2]][:, None, None]
  dx = cols[None] - _POSITIONS[factors[:, 3]][:, None, None]
  dy = rows[None] - _POSITIONS[factors[:, 4]][:, None, None]
  # Rotate the image frame by -angle into the shape's frame. Rows grow
  # downwards, so a counter-clockwise turn on screen is a clockwise one in
  # (col, row) coordinates.
  cos, sin = np.cos(angle), np.sin(angle)
  u = (cos * dx - sin * dy) / half
  v = (sin * dx + cos * dy) / half
  images = np.zeros((len(factors), IMAGE_SIZE, IMAGE_SIZE), np.float32)
  for shape in range(FACTOR_SIZES[0]):
    rows_of_shape = factors[:, 0] == shape
    images[rows_of_shape] = _inside(shape, u[rows_of_shape], v[rows_of_shape])
  return images[..., None]


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The full factorial data set.

  Attributes:
    images: float32 [N, 32, 32, 1] in {0, 1}.
    factors: int32 [N, K] factor indices; row n is
      `np.unravel_index(n, factor_sizes)`.
    factor_sizes: number of values of each factor, (3, 4, 8, 8, 8).
    factor_names: ('shape', 'scale', 'orientation', 'x', 'y').
  """
  images: np.ndarray
  factors: np.ndarray
  factor_sizes: tuple[int, ...] = FACTOR_SIZES
  factor_names: tuple[str, ...] = FACTOR_NAMES

  @property
  def num_factors(self) -> int:
    return len(self.factor_sizes)

  def __len__(self) -> int:
    return len(self.images)

  def index_of(self, factors_NxK: np.ndarray) -> np.ndarray:
    """Rows [N] of the images with the given factor indices [N, K]."""
    factors = np.asarray(factors_NxK)
    return np.ravel_multi_index(tuple(factors.T), self.factor_sizes)

  def sample_factors(self, rng: np.random.Generator, num: int) -> np.ndarray:
    """[num, K] factor indices, each factor uniform and independent."""
    return np.stack([rng.integers(0, size, num) for size in self.factor_sizes], axis=1)

  def sample_with_fixed_factor(self, rng: np.random.Generator, num: int, factor: int,
                               value: int | None = None) -> np.ndarray:
    """Rows [num] of images sharing one value of `factor`, the others uniform.

    Args:
      rng: numpy generator.
      num: number of images.
      factor: index k of the factor held fixed.
      value: its value; None draws one uniformly.

    Returns:
      int [num] rows of `images`.
    """
    if not 0 <= factor < self.num_factors:
      raise ValueError(f'factor must be in [0, {self.num_factors}), got {factor}.')
    factors = self.sample_factors(rng, num)
    factors[:, factor] = rng.integers(0, self.factor_sizes[factor]) if value is None else value
    return self.index_of(factors)


@functools.cache
def _make_shapes() -> Shapes:
  factors = np.stack(np.unravel_index(np.arange(np.prod(FACTOR_SIZES)), FACTOR_SIZES),
                     axis=1).astype(np.int32)
  images = render(factors)
  images.setflags(write=False)
  factors.setflags(write=False)
  return Shapes(images=images, factors=factors)


def make_shapes() -> Shapes:
  """All 6,144 images and their factors (rendered once per process, read-only)."""
  return _make_shapes()


def load_arrays(split: str = 'train') -> tuple[np.ndarray, np.ndarray]:
  """(images [N, 32, 32, 1], labels int32 [N]) for the data registry.

  There is no held-out split: disentanglement is measured on the generating
  grid itself. 'train' and 'test' both return all 6,144 images; the label is
  the shape (factor 0).
  """
  if split not in ('train', 'test'):
    raise ValueError(f"Dataset 'shapes' has splits ('train', 'test'); got {split!r}.")
  data = make_shapes()
  return data.images, data.factors[:, 0].astype(np.int32)
