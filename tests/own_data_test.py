"""Your own images as `config.data.name`: 'npz:PATH' and 'folder:PATH' (ae_jax.data.sources).

Small .npz files and PNG folders are made in tmp dirs; the expected values are
the arrays written (uint8 / 255, or 0/1 kept), the labels the sorted class
subfolders. The launcher runs (integration tier) train `vae:smoke` and
`conv_vae:smoke` on them end to end.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ae_jax import data
from ae_jax import training
from ae_jax.data import sources
from experiments import cli
from experiments.configs import vae as vae_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _npz(tmp_path, name='d.npz', **arrays):
  path = tmp_path / name
  np.savez(path, **arrays)
  return f'npz:{path}'


def _rows(images):
  """Each image as bytes, to match rows across splits regardless of order."""
  return [im.tobytes() for im in images]


def _both_splits(name, **kwargs):
  train = data.open_source(name, 'train', **kwargs)
  test = data.open_source(name, 'test', **kwargs)
  images = np.concatenate([train.images, test.images])
  labels = np.concatenate([train.labels, test.labels])
  return train, test, images, labels


# ----------------------------------------------------------------------------
# npz:PATH


def test_npz_float_images_and_labels_are_served_as_stored(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(50, 6, 5, 3)).astype(np.float32)
  y = np.arange(50) % 5
  name = _npz(tmp_path, image=x, label=y)
  train, test, images, labels = _both_splits(name)
  # The fixed stratified 80/20 split: 8 train and 2 test per class.
  assert (len(train), len(test)) == (40, 10)
  assert np.bincount(test.labels).tolist() == [2] * 5
  assert train.element_shape == (6, 5, 3) and train.images.dtype == np.float32
  # Every stored image exactly once, with its own label.
  by_row = dict(zip(_rows(x), y))
  assert sorted(_rows(images)) == sorted(by_row)
  assert [by_row[r] for r in _rows(images)] == labels.tolist()
  assert not set(_rows(train.images)) & set(_rows(test.images))
  # The same split every time.
  np.testing.assert_array_equal(data.open_source(name, 'test').images, test.images)


def test_npz_uint8_is_divided_by_255_but_0_1_images_are_kept(tmp_path):
  rng = np.random.default_rng(1)
  grey = rng.integers(0, 256, size=(20, 4, 4, 1), dtype=np.uint8)
  grey[0, 0, 0, 0] = 255
  _, _, images, _ = _both_splits(_npz(tmp_path, 'grey.npz', images=grey))
  assert sorted(_rows(images)) == sorted(_rows(grey.astype(np.float32) / np.float32(255)))
  # dSprites style: 0/1 pixels stored as uint8 stay 0/1, not 0 and 1/255.
  binary = rng.integers(0, 2, size=(20, 4, 4, 1), dtype=np.uint8)
  _, _, images, labels = _both_splits(_npz(tmp_path, 'bin.npz', image=binary))
  assert images.max() == 1.0 and set(np.unique(images)) == {0.0, 1.0}
  assert sorted(_rows(images)) == sorted(_rows(binary.astype(np.float32)))
  assert (labels == -1).all()  # No labels stored.


@pytest.mark.parametrize('arrays, fragments', [
    (dict(image=np.zeros((10, 8, 8), np.float32)),
     ['shape [N, H, W, C]', '(10, 8, 8)', 'images[..., None]']),
    (dict(image=np.zeros((10, 8, 8, 1), np.int64)),
     ['uint8', 'floating point in [0, 1]', 'dtype int64']),
    (dict(image=np.full((10, 8, 8, 1), 2.0, np.float32)),
     ['must lie in [0, 1]', 'values in [2, 2]', 'store uint8']),
    (dict(image=np.full((10, 8, 8, 1), np.nan, np.float32)),
     ['640 image values are NaN or infinite']),
    (dict(image=np.zeros((10, 8, 8, 1), np.float32), label=np.zeros((9,), np.int64)),
     ['labels must have shape [N] = [10]', '(9,)']),
    (dict(image=np.zeros((10, 8, 8, 1), np.float32), label=np.zeros((10,), np.float32)),
     ['labels must be integers', 'float32']),
    (dict(pixels=np.zeros((10, 8, 8, 1), np.float32)),
     ["holds ['pixels']", "under 'image'"]),
])
def test_unusable_npz_is_refused_naming_path_and_problem(tmp_path, arrays, fragments):
  name = _npz(tmp_path, **arrays)
  with pytest.raises(ValueError) as info:
    data.open_source(name, 'train')
  message = str(info.value)
  assert str(tmp_path / 'd.npz') in message and '\n' not in message
  for fragment in fragments:
    assert fragment in message


def test_npz_path_split_and_shape_errors(tmp_path):
  with pytest.raises(ValueError, match=r'npz file .*missing\.npz does not exist; expected a '
                                       r'\.npz written with np\.savez'):
    data.open_source(f'npz:{tmp_path}/missing.npz', 'train')
  (tmp_path / 'junk.npz').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='cannot be read as a numpy .npz archive'):
    data.open_source(f'npz:{tmp_path}/junk.npz', 'train')
  name = _npz(tmp_path, image=np.zeros((10, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match=r"has splits \('train', 'test'\); got 'validation'"):
    data.open_source(name, 'validation')
  with pytest.raises(ValueError, match=r'images of shape \(8, 8, 1\), not '
                                       r'image_shape=\(28, 28, 1\); npz images are used as'):
    data.open_source(name, 'train', image_shape=(28, 28, 1))
  with pytest.raises(ValueError, match="image_shape=.* has no effect on 'digits'"):
    data.open_source('digits', 'train', image_shape=(8, 8, 1))


# ----------------------------------------------------------------------------
# folder:PATH


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def test_folder_class_subfolders_are_labels_and_values_are_pixels_over_255(tmp_path):
  # Class 'b' sorts after 'a': labels 0 and 1. Solid 28x28 grey images: no resizing.
  for i in range(10):
    _png(tmp_path / 'a' / f'{i}.png', np.full((28, 28), 10 * i, np.uint8))
    _png(tmp_path / 'b' / 'nested' / f'{i}.png', np.full((28, 28), 100 + 10 * i, np.uint8))
  (tmp_path / 'a' / 'notes.txt').write_text('not an image: skipped')
  train, test, images, labels = _both_splits(f'folder:{tmp_path}')
  assert (len(train), len(test)) == (16, 4)
  assert np.bincount(test.labels).tolist() == [2, 2]
  assert train.element_shape == (28, 28, 1)
  values = images[:, 0, 0, 0] * 255
  np.testing.assert_allclose(values, np.round(values), atol=1e-4)
  assert ((images == images[:, :1, :1, :]).all())  # Solid images stay solid.
  got = {(int(round(v)), int(label)) for v, label in zip(values, labels)}
  assert got == {(10 * i, 0) for i in range(10)} | {(100 + 10 * i, 1) for i in range(10)}


def test_folder_images_are_center_cropped_then_resized_to_the_shape(tmp_path):
  # A portrait 20 wide x 60 tall: white top and bottom thirds, a red middle third.
  # The centered 20x20 box is the red part: resized to 8x8 RGB it is all red.
  tall = np.full((60, 20, 3), 255, np.uint8)
  tall[20:40] = (200, 0, 0)
  # A landscape 90 wide x 30 tall, grey 60 in the middle 30 columns: the same.
  wide = np.full((30, 90, 3), 255, np.uint8)
  wide[:, 30:60] = 60
  for i in range(5):
    _png(tmp_path / f'tall{i}.png', tall)
    _png(tmp_path / f'wide{i}.png', wide)
  _, _, images, labels = _both_splits(f'folder:{tmp_path}', image_shape=(8, 8, 3))
  assert images.shape == (10, 8, 8, 3) and (labels == -1).all()
  colours = {tuple(np.round(im.reshape(-1, 3) * 255).astype(int)[0]) for im in images}
  assert colours == {(200, 0, 0), (60, 60, 60)}
  assert all((im == im[0, 0]).all() for im in images)  # No white border survives.
  # Grayscale target: PIL's luma of (200, 0, 0) is 200 * 299 / 1000 = 59.8 -> 60.
  _, _, grey, _ = _both_splits(f'folder:{tmp_path}', image_shape=(4, 4, 1))
  assert sorted(set(np.round(grey.ravel() * 255).astype(int))) == [60]


def test_adding_a_file_to_a_folder_moves_no_other_file_between_splits(tmp_path):
  for i in range(30):
    _png(tmp_path / 'c' / f'{i:02d}.png', np.full((28, 28), i, np.uint8))
  before = set(_rows(data.open_source(f'folder:{tmp_path}', 'test').images))
  _png(tmp_path / 'c' / 'extra.png', np.full((28, 28), 200, np.uint8))
  train = set(_rows(data.open_source(f'folder:{tmp_path}', 'train').images))
  after = set(_rows(data.open_source(f'folder:{tmp_path}', 'test').images))
  assert not before & train  # No earlier test image moved into train.
  assert len(after - before) <= 1


def test_unusable_folders_are_refused_naming_path_and_problem(tmp_path):
  with pytest.raises(ValueError, match=r'folder .*nope does not exist or is not a directory'):
    data.open_source(f'folder:{tmp_path}/nope', 'train')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match=r'folder .*empty holds no image files \(\.png'):
    data.open_source(f'folder:{tmp_path}/empty', 'train')
  mixed = tmp_path / 'mixed'
  _png(mixed / 'loose.png', np.zeros((4, 4), np.uint8))
  _png(mixed / 'cls' / 'a.png', np.zeros((4, 4), np.uint8))
  with pytest.raises(ValueError, match='has both image files .*and subfolders'):
    data.open_source(f'folder:{mixed}', 'train')
  hollow = tmp_path / 'hollow'
  _png(hollow / 'a' / '0.png', np.zeros((4, 4), np.uint8))
  (hollow / 'b').mkdir()
  with pytest.raises(ValueError, match="class subfolder 'b' holds no image files"):
    data.open_source(f'folder:{hollow}', 'train')
  broken = tmp_path / 'broken'
  for i in range(5):
    _png(broken / f'{i}.png', np.zeros((4, 4), np.uint8))
  (broken / 'bad.png').write_bytes(b'not a png')
  with pytest.raises(ValueError, match=r'folder .*broken: bad\.png cannot be read as an image'):
    data.open_source(f'folder:{broken}', 'train')
  with pytest.raises(ValueError, match=r'image_shape=\(8, 8, 2\) is not an image shape; '
                                       r'expected \(H, W, C\)'):
    data.open_source(f'folder:{broken}', 'train', image_shape=(8, 8, 2))


# ----------------------------------------------------------------------------
# Configs: validated up front with the path named.


def _config(name, **data_fields):
  config = vae_config.get_config('smoke')
  config.data.name = name
  for key, value in data_fields.items():
    config.data[key] = value
  return config


def _folder(tmp_path, shape=(28, 28), per_class=30):
  for c in range(2):
    for i in range(per_class):
      _png(tmp_path / 'imgs' / f'class{c}' / f'{i}.png', np.full(shape, 7 * i + c, np.uint8))
  return f'folder:{tmp_path / "imgs"}'


def test_configs_with_own_data_validate_and_unusable_data_is_named(tmp_path):
  x = np.random.default_rng(0).uniform(size=(100, 28, 28, 1)).astype(np.float32)
  training.validate(_config(_npz(tmp_path, image=x)))
  training.validate(_config(_folder(tmp_path)))
  training.validate(_config(_folder(tmp_path), image_shape=(28, 28, 1)))

  bad = _npz(tmp_path, 'bad.npz', image=x * 3)
  with pytest.raises(ValueError, match=re.escape(f'config.data.name={bad!r}: npz file ') +
                     '.*must lie in'):
    training.validate(_config(bad))
  # The shipped MLP VAE takes 784 values; a 32x32x3 folder says what would fit.
  with pytest.raises(ValueError, match=r'config.model.input_dim=784 \(the model default\) does '
                                       r'not fit the data: .* 32x32x3 = 3072 values; .*'
                                       r'config.data.image_shape 784 values'):
    training.validate(_config(_folder(tmp_path), image_shape=(32, 32, 3)))
  with pytest.raises(ValueError, match=r"config.data.image_shape=\(28, 28, 1\) has no effect on "
                                       r"'mnist5k': only 'folder:PATH' and TFDS images"):
    training.validate(_config('mnist5k', image_shape=(28, 28, 1)))
  with pytest.raises(ValueError, match="config.data.data_dir='/x' has no effect: .* is read "
                                       'from its own path'):
    training.validate(_config(_folder(tmp_path), data_dir='/x'))
  with pytest.raises(ValueError, match="'npz:PATH' .*'folder:PATH'"):
    training.validate(_config('my_images'))


def test_tfds_dataset_ae_jax_cannot_read_is_refused_before_preparation(tmp_path, no_network):
  # imagenette's images have no fixed size: refused, without asking for a build,
  # unless an image_shape says what to resize them to.
  empty = tmp_path / 'tfds'
  empty.mkdir()
  with pytest.raises(ValueError) as info:
    data.open_source('tfds:imagenette', 'train', data_dir=str(empty))
  message = str(info.value)
  assert not isinstance(info.value, data.DatasetNotFoundError)
  assert '(None, None, 3)' in message and 'config.data.image_shape' in message
  assert 'tfds build' not in message and 'not prepared' not in message
  with pytest.raises(ValueError, match=r"imagenette' has images of varying size \(None, None, "
                                       r'3\); set config.data.image_shape'):
    training.validate(_config('tfds:imagenette', data_dir=str(empty)))
  # With a shape it is usable, so the next question is whether it is prepared.
  with pytest.raises(data.DatasetNotFoundError, match='not prepared'):
    data.open_source('tfds:imagenette', 'train', data_dir=str(empty), image_shape=(28, 28, 1))
  # A usable one that is not prepared still says how to prepare it.
  with pytest.raises(data.DatasetNotFoundError, match='prepare cifar10 --download'):
    data.open_source('tfds:cifar10', 'train', data_dir=str(empty))


# ----------------------------------------------------------------------------
# Configs by short name.


def test_configs_are_found_by_short_name():
  names = cli.config_names()
  assert {'vae', 'conv_vae', 'apps/denoise'} <= set(names)
  assert 'common' not in names and 'apps/base' not in names
  assert cli.resolve_config_spec('vae:smoke') == os.path.join(
      REPO, 'experiments', 'configs', 'vae.py') + ':smoke'
  assert cli.resolve_config_spec('apps/denoise').endswith('experiments/configs/apps/denoise.py')
  # Paths stay as given; unknown names too (the loader names them).
  assert cli.resolve_config_spec('experiments/configs/vae.py:smoke') == (
      'experiments/configs/vae.py:smoke')
  assert cli.resolve_config_spec('nope:smoke') == 'nope:smoke'
  assert cli.resolve_config_argv(['m', '--config', 'vae', '--config.loss.beta=2']) == [
      'm', '--config', os.path.join(REPO, 'experiments', 'configs', 'vae.py'),
      '--config.loss.beta=2']
  with pytest.raises(FileNotFoundError, match="no config named 'nope'; the configs: aae, "):
    cli._load_config_file('nope:smoke')  # pylint: disable=protected-access


# ----------------------------------------------------------------------------
# End to end through the launcher (integration tier).


def _launch(tmp_path, config, name, *overrides):
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.main', f'--config={config}',
       f'--config.data.name={name}', *overrides, f'--workdir={workdir}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  records = [json.loads(line) for line in
             (workdir / 'model' / 'metrics.jsonl').read_text().splitlines()]
  assert {r['split'] for r in records} == {'train', 'eval'}
  assert max(r['step'] for r in records) == 6
  assert all(np.isfinite(r['loss']) for r in records)
  assert json.loads((workdir / 'config.json').read_text())['data']['name'] == name
  assert sorted(p.name for p in (workdir / 'figures').glob('*.png'))
  return result


@pytest.mark.integration
def test_launcher_trains_a_smoke_preset_on_an_npz_file(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(100, 28, 28, 1), dtype=np.uint8)
  result = _launch(tmp_path, 'vae:smoke', _npz(tmp_path, image=images, label=np.arange(100) % 10))
  assert 'Finished' in result.stdout


@pytest.mark.integration
def test_launcher_trains_a_smoke_preset_on_an_image_folder(tmp_path):
  rng = np.random.default_rng(0)
  for c in ('cats', 'dogs'):
    for i in range(40):
      _png(tmp_path / 'imgs' / c / f'{i}.jpg', rng.integers(0, 256, (48, 40, 3), np.uint8))
  result = _launch(tmp_path, 'experiments/configs/conv_vae.py:smoke', f'folder:{tmp_path}/imgs',
                   '--config.data.image_shape=(28, 28, 1)')
  assert 'Finished' in result.stdout


def test_a_run_from_before_image_shape_existed_still_resumes():
  from ae_jax.training import run  # pylint: disable=g-import-not-at-top
  config = vae_config.get_config('smoke')
  old = run.config_fields(config)
  del old['data.image_shape']  # A config.json written before the field was added.
  assert run.config_changes(old, config) == ([], [])
  config.data.image_shape = (28, 28, 1)
  assert run.config_changes(old, config) == (
      [], ["data.image_shape: '<absent>' -> [28, 28, 1]"])


def test_tfds_images_are_converted_cropped_and_resized_to_image_shape(no_network):
  """tfds:NAME with an image_shape: each image as PIL converts (grey or RGB), center-crops
  and resizes it; the reference is PIL applied here to the mocked records."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=6):
    colour = tfds.data_source('cifar10', split='train')
    for shape, mode in (((28, 28, 1), 'L'), ((16, 24, 3), 'RGB')):
      for in_memory in (False, True):
        source = data.open_source('tfds:cifar10', 'train', image_shape=shape)
        if not in_memory:
          source = sources.TfdsSource('tfds:cifar10', 'train', image_shape=shape, in_memory=False)
        assert source.element_shape == shape
        images, labels = source.get(np.arange(4))
        assert images.shape == (4, *shape) and images.dtype == np.float32
        for i in range(4):
          image = Image.fromarray(colour[i]['image']).convert(mode)
          if shape[:2] == (16, 24):  # 32x32 to a 2:3 box: rows 5..26 kept (21.33 -> 21).
            image = image.crop((0, 5, 32, 26))
          want = np.asarray(image.resize(shape[1::-1], Image.Resampling.BILINEAR), np.float32)
          np.testing.assert_array_equal(images[i], want.reshape(shape) / np.float32(255))
          assert labels[i] == colour[i]['label']
    # Varying sizes (imagenette) all come out at the one shape.
    images, _ = data.open_source('tfds:imagenette', 'train', image_shape=(20, 20, 3)).get(
        np.arange(6))
    assert images.shape == (6, 20, 20, 3) and 0.0 <= images.min() and images.max() <= 1.0
    # The native shape asked for: the records as stored.
    same = data.open_source('tfds:cifar10', 'train', image_shape=(32, 32, 3)).get(np.arange(2))[0]
    np.testing.assert_array_equal(
        same, np.stack([colour[i]['image'] for i in range(2)]).astype(np.float32) / np.float32(255))


@pytest.mark.integration
def test_tfds_images_resized_train_a_smoke_preset(tmp_path, no_network):
  """vae:smoke (784 inputs) on CIFAR-10's 32x32 colour images resized to 28x28 grey:
  validated, fitted by the loop and evaluated (TFDS's mock data, no files)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = vae_config.get_config('smoke')
  config.data.name = 'tfds:cifar10'
  config.data.image_shape = (28, 28, 1)
  with tfds.testing.mock_data(num_examples=64):
    recipe = training.validate(config)
    stage = recipe.make_stage(config, recipe.stages(config)[0], {})
    first = next(stage.train_data(0))
    assert first['image'].shape == (config.data.batch_size, 28, 28, 1)
    trained = training.fit(stage, str(tmp_path / 'model'), faults='')
  assert int(trained.state.step) == config.train.num_train_steps
  assert np.isfinite(trained.metrics['loss'])
