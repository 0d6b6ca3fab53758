"""The tables a reader of a committed study quotes, printed from its report.json (markdown).

  python docs/studies/summarize.py docs/studies/kvasir_squeezenet/report.json [POINT]

1. The headline: POINT (default: the report's primary metric) per arm and training fraction,
   mean over seeds with its 95% bootstrap interval over test units; the best arm of each
   fraction in bold; arms whose runs learned nothing (constant output) flagged.
2. Finding 1: at each fraction, the best fine-tuning arm against each scratch arm, from the
   report's all-pairs table of POINT (difference [95% CI], adjusted p, mark).
3. Finding 3: at each fraction, where the best arm lies among the depths, and every depth
   whose adjusted p against the best is >= 0.05 (not distinguishable from it).
4. Finding 2: the report's robustness table, if it has one.
Every number is read from report.json; nothing is recomputed.
"""

import json
import sys


def _ci(v, lo, hi, d=3):
  if v is None:
    return '–'
  return f'{v:.{d}f}' + (f' [{lo:.{d}f}, {hi:.{d}f}]' if lo is not None and hi is not None
                         else '')


def _p(p):
  return '–' if p is None else f'{p:.3g}'


def main(path, point=None):
  r = json.load(open(path))
  point = point or r['primary_metric']
  label = next(p['label'] for p in r['points'] if p['key'] == point)
  fractions = sorted({row['fraction'] for row in r['rows']})
  arms = list(dict.fromkeys(row['arm'] for row in r['rows']))
  cell = {(row['arm'], row['fraction']): row for row in r['rows']}
  print(f'### {label} per arm (mean over seeds [95% CI over test units])\n')
  print('| arm | ' + ' | '.join(f'fraction {f:g}' for f in fractions) + ' |')
  print('|---|' + '---|' * len(fractions))
  for a in arms:
    cells = []
    for f in fractions:
      row = cell.get((a, f)) or {}
      m = (row.get('metrics') or {}).get(point) or {}
      text = _ci(m.get('value'), m.get('low'), m.get('high'))
      if row.get('is_best') and point == r['primary_metric']:  # best by the primary metric
        text = f'**{text}**'
      if row.get('constant_seeds'):
        text += ' (dead: ' + ', '.join(f's{s}' for s in row['constant_seeds']) + ')'
      cells.append(text + f' n={row.get("n_seeds", 0)}')
    print(f'| {a} | ' + ' | '.join(cells) + ' |')
  tables = {t['fraction']: t for t in r['pairs'] if t['point'] == point}
  print(f'\n### Finding 1: best fine-tuning arm vs each scratch arm ({label})\n')
  print('| fraction | fine-tuned | scratch | FT − scratch [95% CI] | p (adj.) | mark |')
  print('|---|---|---|---|---|---|')
  sign = 1 if next(p for p in r['points'] if p['key'] == point)['higher_is_better'] else -1
  for f in fractions:
    tuned = [a for a in arms if not a.startswith('scratch') and cell.get((a, f), {}).get(
        'metrics', {}).get(point)]
    if not tuned or f not in tables:
      continue
    best = max(tuned, key=lambda a: sign * cell[(a, f)]['metrics'][point]['value'])
    for row in tables[f]['rows']:
      if {row['a'], row['b']} & {best} and (row['a'].startswith('scratch')
                                             or row['b'].startswith('scratch')):
        flip = row['a'] != best
        d, lo, hi = row['difference'], row.get('low'), row.get('high')
        if flip:
          d, lo, hi = -d, (None if hi is None else -hi), (None if lo is None else -lo)
        other = row['a'] if flip else row['b']
        print(f'| {f:g} | {best} | {other} | {_ci(d, lo, hi)} | {_p(row["p_adjusted"])} | '
              f'{row["mark"]} |')
  print(f'\n### Finding 3: the best arm and the depths not distinguishable from it ({label})\n')
  print('| fraction | best arm | depths with adjusted p >= 0.05 against it |')
  print('|---|---|---|')
  for f in fractions:
    best = next((row['arm'] for row in r['rows'] if row['fraction'] == f and row.get('is_best')),
                None)
    if best is None or f not in tables:
      continue
    same = [row['b'] if row['a'] == best else row['a'] for row in tables[f]['rows']
            if best in (row['a'], row['b']) and (row['p_adjusted'] is None
                                                 or row['p_adjusted'] >= 0.05)]
    print(f'| {f:g} | {best} | {", ".join(a for a in arms if a in same) or "none"} |')
  robust = r.get('robustness')
  if robust and robust.get('pairs'):
    print(f'\n### Finding 2: loss from fraction {robust["fraction_large"]:g} to '
          f'{robust["fraction_small"]:g} ({robust["label"]})\n')
    print('| arm | loss [95% CI] |\n|---|---|')
    for row in robust['rows']:
      print(f'| {row["arm"]} | {_ci(row["loss"], row["low"], row["high"])} |')
    print('\n| fine-tuned | scratch | loss(scratch) − loss(FT) [95% CI] | p (adj.) | mark |')
    print('|---|---|---|---|---|')
    for row in robust['pairs']:
      print(f'| {row["fine_tuned"]} | {row["scratch"]} | '
            f'{_ci(row["difference"], row["low"], row["high"])} | {_p(row["p_adjusted"])} | '
            f'{row["mark"]} |')


if __name__ == '__main__':
  main(*sys.argv[1:])
