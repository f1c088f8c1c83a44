"""MNIST, Fashion-MNIST and CIFAR-10 prepared without TensorFlow from their original
file formats (ae_jax.data.offline), downloaded from a loopback HTTP server.

The served files are generated here in the original formats (gzipped idx;
CIFAR-10's binary tar.gz) with full split sizes and contents that say where
each image came from: MNIST image i is all i % 256 but pixel (0, 0) =
(i // 256) % 256, label i % 10; CIFAR-10 image i has planes R, G, B constant
at i, 2i, 3i (mod 256), label i % 10. Nothing leaves 127.0.0.1.
"""

import gzip
import hashlib
import http.server
import io
import os
import sys
import tarfile
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ae_jax import data
from ae_jax.data import offline
from ae_jax.data import prepare

_MNIST_SPLITS = {'train': 60_000, 't10k': 10_000}
_CIFAR_NAMES = ['plane', 'car', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def _idx(array: np.ndarray) -> bytes:
  magic = 0x800 + array.ndim
  header = np.array([magic, *array.shape], '>i4').tobytes()
  return gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1)


def _mnist_images(num: int) -> np.ndarray:
  index = np.arange(num)
  images = np.broadcast_to((index % 256).astype(np.uint8)[:, None, None], (num, 28, 28)).copy()
  images[:, 0, 0] = (index // 256) % 256
  return images


def _write_mnist(directory) -> None:
  for split, num in _MNIST_SPLITS.items():
    (directory / f'{split}-images-idx3-ubyte.gz').write_bytes(_idx(_mnist_images(num)))
    (directory / f'{split}-labels-idx1-ubyte.gz').write_bytes(_idx(np.arange(num) % 10))


def _cifar_records(first: int, num: int) -> bytes:
  index = np.arange(first, first + num)
  records = np.empty((num, 1 + 3072), np.uint8)
  records[:, 0] = index % 10
  for plane in range(3):
    records[:, 1 + 1024 * plane:1 + 1024 * (plane + 1)] = ((plane + 1) * index % 256)[:, None]
  return records.tobytes()


def _write_cifar(directory) -> None:
  members = {f'data_batch_{b + 1}.bin': _cifar_records(10_000 * b, 10_000) for b in range(5)}
  members['test_batch.bin'] = _cifar_records(0, 10_000)
  members['batches.meta.txt'] = ('\n'.join(_CIFAR_NAMES) + '\n\n').encode()
  with tarfile.open(directory / 'cifar-10-binary.tar.gz', 'w:gz', compresslevel=1) as tar:
    for name, payload in members.items():
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


class _Server:
  """Serves a directory on 127.0.0.1; `fail[name] = n` answers 503 to the next n
  requests of that file; `requests` counts them all."""

  def __init__(self, directory):
    self.fail, self.requests = {}, []
    server = self

    class Handler(http.server.SimpleHTTPRequestHandler):

      def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(directory), **kwargs)

      def do_GET(self):  # pylint: disable=invalid-name
        name = self.path.lstrip('/')
        server.requests.append(name)
        if server.fail.get(name, 0) > 0:
          server.fail[name] -= 1
          self.send_error(503, 'try again')
          return
        super().do_GET()

      def log_message(self, *args):
        del args

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/'
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
  served = tmp_path / 'served'
  served.mkdir()
  srv = _Server(served)
  srv.dir = served
  yield srv
  srv.close()


def _files(directory, names):
  """RemoteFile entries with the checksums of the files we serve."""
  out = []
  for name in names:
    payload = (directory / name).read_bytes()
    out.append(offline.RemoteFile(name, f'https://unused.invalid/{name}', len(payload),
                                  hashlib.sha256(payload).hexdigest()))
  return out


def test_official_files_are_tfds_registered_checksums():
  files = {f.name: f for f in offline.official_files('mnist')}
  assert set(files) == {f'{s}-{k}' for s in _MNIST_SPLITS
                        for k in ('images-idx3-ubyte.gz', 'labels-idx1-ubyte.gz')}
  assert files['train-images-idx3-ubyte.gz'].size == 9_912_422
  (cifar,) = offline.official_files('cifar10')
  assert cifar.name == 'cifar-10-binary.tar.gz' and len(cifar.sha256) == 64
  with pytest.raises(ValueError, match="No original files known for 'svhn_cropped'"):
    offline.official_files('svhn_cropped')


def test_download_retries_and_refuses_a_wrong_checksum(server, tmp_path):
  (server.dir / 'a.bin').write_bytes(b'abc' * 1000)
  files = _files(server.dir, ['a.bin'])
  server.fail['a.bin'] = 2  # Two 503s, then the file.
  lines = []
  paths = offline.download_files(files, str(tmp_path / 'dl'), base_url=server.url,
                                 backoff_seconds=0.01, log=lines.append)
  assert open(paths['a.bin'], 'rb').read() == b'abc' * 1000
  assert server.requests == ['a.bin'] * 3 and 'attempt 3 of 4' in lines[-1]
  # Already there with the right checksum: not fetched again.
  offline.download_files(files, str(tmp_path / 'dl'), base_url=server.url, log=lines.append)
  assert server.requests == ['a.bin'] * 3
  # The served bytes do not match the checksum: every attempt fails, the error says why.
  wrong = [offline.RemoteFile('a.bin', '', files[0].size, '0' * 64)]
  with pytest.raises(offline.DownloadError) as info:
    offline.download_files(wrong, str(tmp_path / 'dl2'), base_url=server.url, retries=2,
                           backoff_seconds=0.01, log=lines.append)
  message = str(info.value)
  assert f'{server.url}a.bin' in message and 'in 2 attempts' in message
  assert 'expected 3000 bytes with sha256 ' + '0' * 64 in message
  assert not os.listdir(tmp_path / 'dl2')  # No partial file left.
  with pytest.raises(offline.DownloadError, match='404'):
    offline.download_files([offline.RemoteFile('missing.bin', '', 1, '0' * 64)],
                           str(tmp_path / 'dl3'), base_url=server.url, retries=1,
                           log=lines.append)


def test_missing_files_without_download_say_how(tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match=r'mnist: t10k-images-idx3-ubyte.gz, .*train-images-idx3-ubyte.gz.* missing'
                                              r' from .*prepare mnist --download'):
    offline.prepare('mnist', tmp_path / 'tfds', manual_dir=tmp_path / 'none')
  assert prepare.main(['cifar10', '--data_dir', str(tmp_path / 'tfds')]) == 1
  assert 'cifar-10-binary.tar.gz missing' in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
def test_idx_datasets_download_prepare_and_read_back(name, server, tmp_path):
  _write_mnist(server.dir)
  files = _files(server.dir, sorted(os.listdir(server.dir)))
  server.fail['train-labels-idx1-ubyte.gz'] = 1
  data_dir = tmp_path / 'tfds'
  builder = offline.prepare(name, data_dir, download=True, base_url=server.url, files=files,
                            backoff_seconds=0.01, log=lambda line: None)
  assert 'tensorflow' not in sys.modules
  assert builder.info.splits['train'].num_examples == 60_000
  assert server.requests.count('train-labels-idx1-ubyte.gz') == 2  # One retry.
  # The official reader, under the official name.
  # TFDS stores records in the order of its key hash (the keys are the positions
  # in the idx files, as in the official build); each image says its position.
  source = tfds.data_source(name, split='test', data_dir=str(data_dir))
  assert len(source) == 10_000
  expected = _mnist_images(10_000)
  for k in (0, 257, 9_999):
    record = source[k]
    position = int(record['image'][0, 0, 0]) * 256 + int(record['image'][0, 1, 0])
    np.testing.assert_array_equal(record['image'][..., 0], expected[position])
    assert record['label'] == position % 10
  images, labels = data.load_arrays(name, 'train', data_dir=str(data_dir))
  pixels = np.round(images[..., 0] * 255).astype(np.int64)
  positions = pixels[:, 0, 0] * 256 + pixels[:, 0, 1]
  assert sorted(positions) == list(range(60_000))  # Every image once.
  np.testing.assert_array_equal(pixels, _mnist_images(60_000)[positions])
  np.testing.assert_array_equal(labels, positions % 10)
  # Prepared: a second call is a no-op, through the CLI too.
  assert offline.prepare(name, data_dir).is_prepared()


@pytest.mark.integration
def test_cifar10_downloads_prepares_and_reads_back(server, tmp_path, capsys):
  _write_cifar(server.dir)
  files = _files(server.dir, ['cifar-10-binary.tar.gz'])
  data_dir = tmp_path / 'tfds'
  builder = offline.prepare('cifar10', data_dir, download=True, base_url=server.url,
                            files=files, log=lambda line: None)
  assert 'tensorflow' not in sys.modules
  assert builder.info.features['label'].names == _CIFAR_NAMES
  source = tfds.data_source('cifar10', split='train', data_dir=str(data_dir))
  assert len(source) == 50_000
  seen = set()
  for k in (0, 12_345, 49_999):
    record = source[k]
    name = record['id'].decode() if isinstance(record['id'], bytes) else record['id']
    assert name.startswith('train_')
    i = int(name[len('train_'):])
    seen.add(i)
    assert record['label'] == i % 10
    np.testing.assert_array_equal(record['image'][0, 0], [i % 256, 2 * i % 256, 3 * i % 256])
    assert (record['image'] == record['image'][0, 0]).all()
  assert len(seen) == 3
  images, labels = data.load_arrays('cifar10', 'test', data_dir=str(data_dir))
  assert images.shape == (10_000, 32, 32, 3)
  red = np.round(images[:, 0, 0, 0] * 255).astype(np.int64)  # i % 256 of test image i.
  np.testing.assert_array_equal(labels % 10, labels)
  assert np.bincount(labels).tolist() == [1_000] * 10
  # Image and label of the same record: i % 256 and i % 10 agree on i's parity.
  np.testing.assert_array_equal(red % 2, labels % 2)
  assert (np.round(images[:, :, :, 1] * 255).astype(np.int64) == (2 * red % 256)[:, None, None]).all()
  # The CLI from local files (no checksum: given by the user), into another data_dir.
  manual = tmp_path / 'manual'
  manual.mkdir()
  os.link(server.dir / 'cifar-10-binary.tar.gz', manual / 'cifar-10-binary.tar.gz')
  assert prepare.main(['cifar10', '--data_dir', str(tmp_path / 'tfds2'),
                       '--manual_dir', str(manual)]) == 0
  assert 'cifar10 3.0.2 is ready' in capsys.readouterr().out
