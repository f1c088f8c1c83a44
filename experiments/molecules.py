"""Molecule generation: a SMILES/SELFIES VAE on MOSES, judged by MOSES's metrics.

  python -m experiments.molecules --config=experiments/configs/molecule_vae.py --workdir=runs/mol
  python -m experiments.molecules --config=experiments/configs/molecule_vae.py:default,smiles \
      --workdir=runs/mol_smiles
  python -m experiments.molecules --config=experiments/configs/molecule_vae.py \
      --model_workdir=runs/mol --workdir=runs/mol_eval

Trains the config's `SequenceVAE` (recipe 'sequence_vae') into --workdir with
`ae_jax.training` (or restores --model_workdir), samples
`molecules.num_samples` molecules from the prior and writes into --workdir:

  molecules.json                 validity, unique@1k, unique@10k, novelty
                                 (against all of MOSES train, and against the
                                 training subset), IntDiv, IntDiv2, Wasserstein-1
                                 distances of QED / logP / weight to MOSES test,
                                 reconstruction accuracy on test molecules, and
                                 the interpolation's SMILES;
  samples.smi                    the generated SMILES, one a line ('' invalid);
  figures/properties.png         QED, logP and weight: generated against test;
  figures/interpolation.png      RDKit drawing of the molecules decoded along
                                 the line between two test molecules' codes;
  figures/samples.png            RDKit drawing of the first valid samples;
  and, when it trains, the run's model/ (checkpoints/, metrics.jsonl,
  tensorboard/) and figures/reconstructions.png, latent_map.png and
  training_curves.png.
"""

import os
import time

import jax

from ae_jax import plotting
from ae_jax import training
from ae_jax.applications import common
from ae_jax.molecules import data as molecule_data
from ae_jax.molecules import figures
from ae_jax.molecules import generation
from ae_jax.molecules import metrics
from experiments import cli


def run(config, workdir: str, model_workdir: str | None = None) -> dict:
  """Trains or restores the model, samples, computes the metrics, writes figures."""
  cfg = config.molecules
  training.validate(config)  # Before training, and before restoring --model_workdir.
  model, variables = training.train_or_restore(config, workdir, model_workdir=model_workdir)
  tok = molecule_data.tokenizer_from_config(config.data)
  key = jax.random.key(config.train.seed + 1)
  os.makedirs(workdir, exist_ok=True)

  start = time.time()
  strings, smiles = generation.sample_smiles(
      model, variables, cfg.num_samples, key, tok=tok, temperature=cfg.temperature,
      batch_size=cfg.generation_batch_size)
  sample_seconds = time.time() - start
  with open(os.path.join(workdir, 'samples.smi'), 'w') as f:
    f.writelines(f'{s if metrics.to_mol(s) is not None else ""}\n' for s in smiles)

  train_subset = molecule_data.source_from_config(config.data, config.data.train_split)
  test_smiles = molecule_data.moses_subset('test', cfg.num_test_properties, seed=1)
  test_properties = metrics.properties(test_smiles)
  # MOSES stores its splits as canonical SMILES; RDKit today gives the same string for
  # all but about 1 in 20,000 of them (tests/molecules_test.py), so the stored strings
  # serve as the canonical training set (and subset) without canonicalizing 1.6M molecules.
  moses_train = frozenset(molecule_data.read_moses('train'))
  # SNN, Frag and Scaf against MOSES's own statistics of its whole test set.
  reference = metrics.moses_test_statistics(molecule_data.moses_data_dir())
  result = metrics.generation_metrics(
      smiles, train_canonical=moses_train, test_properties=test_properties,
      reference=reference, max_intdiv=cfg.intdiv_max)
  canon = metrics.valid_canonical(smiles)
  if canon:
    result['novelty_vs_training_subset'] = metrics.novelty(canon, frozenset(train_subset.smiles))
  result['sample_seconds'] = sample_seconds
  result['representation'] = tok.representation
  result['num_training_molecules'] = len(train_subset)
  result['skipped_training_molecules'] = dict(train_subset.skipped)

  test = molecule_data.source_from_config(config.data, config.data.eval_split)
  count = min(cfg.num_reconstruction, len(test))
  recon, _ = generation.reconstruction_accuracy(
      model, variables, test.tokens[:count], list(test.smiles[:count]), tok=tok,
      batch_size=cfg.generation_batch_size)
  result.update(recon)
  result['num_reconstruction'] = count

  a, b = test.smiles[0], test.smiles[1]
  path = generation.interpolate(model, variables, a, b, tok=tok,
                                num_steps=cfg.interpolation_steps)
  result['interpolation'] = {'from': a, 'to': b, 'smiles': path,
                             'valid': metrics.validity(path)}
  legends = [f'{i / (len(path) - 1):.2f}: {s}' for i, s in enumerate(path)]
  figure_paths = [figures.save_molecule_grid(
      path, plotting.figure_path(workdir, 'interpolation.png'), legends=legends)]
  if canon:
    generated_properties = metrics.properties(canon)
    figure_paths.append(figures.save_property_histograms(
        generated_properties, test_properties, plotting.figure_path(workdir, 'properties.png'),
        distances={name: result[f'{name}_w1'] for name in metrics.PROPERTIES},
        title=f'{len(canon)} valid generated ({tok.representation}) vs MOSES test'))
    figure_paths.append(figures.save_molecule_grid(
        canon[:16], plotting.figure_path(workdir, 'samples.png')))

  common.write_json(os.path.join(workdir, 'molecules.json'), result)
  keys = ('valid', 'unique@1000', 'unique@10000', 'novelty', 'intdiv', 'snn', 'frag', 'scaf', 'fcd',
          'recon_molecule', 'qed_w1', 'logp_w1', 'weight_w1')
  print('Molecules: ' + ', '.join(f'{k}={result[k]:.4g}' for k in keys if k in result))
  print('Figures: ' + ', '.join(figure_paths))
  return result


if __name__ == '__main__':
  cli.run_app(run, config_help='A molecule config, e.g. experiments/configs/molecule_vae.py.',
              model_workdir_help='Restore a trained run from here instead of training.')
