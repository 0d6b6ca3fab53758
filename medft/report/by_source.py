"""Sources at each depth: "which source, and how deep?" (a sweep of `sweep.sources`).

A sweep of several sources (`medft.sources`) runs each fine-tuning arm once per source, as
the runs `<source>:<arm>`. For every training fraction, tuning depth and compared operating
point, every pair of sources at that depth is tested with the all-pairs tables' statistics
(`report.stats.pairs_table`): the difference A - B of the pooled metric with its
paired-bootstrap interval over test units, the Wilcoxon signed-rank test on per-unit values
(averaged over seeds), and the raw and adjusted p; marks come from the adjusted p only.

Family: one table = every pair of sources at one fraction, one depth and one point. Each depth
asks its own question ("which source, at this depth?"); with two sources a table holds one
pair and its adjusted p is its raw p. The same runs are also in the per-fraction all-pairs
tables (arms `<source>:<arm>` beside scratch), adjusted there within that larger family.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from medft import apps, sources, tuning
from medft.report import stats

FAMILY = ('one table: every pair of sources at one training fraction, one tuning depth and '
          'one operating point')


def source_names(arms: Sequence[str], plan: dict | None) -> list[str]:
  """The sources in the plan's order (sweep.json `sources`), then any other found, sorted."""
  planned = [s['name'] for s in (plan or {}).get('sources', [])
             if isinstance(s, dict) and isinstance(s.get('name'), str)]
  found = {sources.split(a)[0] for a in arms} - {''}
  return planned + sorted(found - set(planned))


def depths_of(arms: Sequence[str]) -> list[str]:
  """The fine-tuning depths run from a source, in the arms' order (head first)."""
  return list(dict.fromkeys(sources.split(a)[1] for a in arms if sources.split(a)[0]))


def tables(spec: apps.Spec, points: Sequence[apps.Point], fraction: float,
           present: Mapping[str, stats.SeedTests], names: Sequence[str],
           depths: Sequence[str], n_boot: int, correction: str,
           replicates: stats.Replicates | None = None) -> list[dict]:
  """One fraction's tables: per depth and compared point, every pair of the sources whose
  run `<source>:<depth>` has finished runs (`present`: run name -> SeedTests)."""
  out = []
  for depth in depths:
    arms = {sources.qualified(n, depth): present[sources.qualified(n, depth)] for n in names
            if sources.qualified(n, depth) in present}
    if len(arms) < 2:
      continue
    for p in points:
      if not p.compared:
        continue
      rows = stats.pairs_table(spec, p, arms, n_boot, correction, replicates=replicates)
      if not any(r.get('n_units') for r in rows):
        continue
      for r in rows:
        r['source_a'], r['source_b'] = sources.split(r['a'])[0], sources.split(r['b'])[0]
      out.append({'fraction': fraction, 'depth': depth, 'point': p.key, 'label': p.label,
                  'unit': p.unit, 'higher_is_better': p.higher_is_better,
                  'correction': correction, 'rows': rows})
  return out


def section(names: Sequence[str], inits: Mapping[str, str], depths: Sequence[str],
            found: list[dict], correction: str) -> dict | None:
  """report.json `sources` (None for a sweep of one source)."""
  if len(names) < 2:
    return None
  return {'sources': [{'name': n, 'init': inits.get(n)} for n in names],
          'depths': list(depths), 'family': FAMILY, 'correction': correction,
          'tables': found}


def csv_rows(report: dict) -> list[dict]:
  """report.csv rows `section=source_pair` (arm/versus: the two runs; metric: the point)."""
  out = []
  for t in (report.get('sources') or {}).get('tables', []):
    for x in t['rows']:
      out.append({'section': 'source_pair', 'fraction': t['fraction'], 'arm': x['a'],
                  'versus': x['b'], 'metric': t['point'], 'value': x.get('difference'),
                  'low': x.get('low'), 'high': x.get('high'), 'n_units': x.get('n_units'),
                  'n_ranked': x.get('n'), 'statistic': x.get('statistic'),
                  'p_raw': x.get('p_raw'), 'p_adjusted': x.get('p_adjusted'),
                  'correction': t['correction'], 'mark': x.get('mark')})
  return out


def markdown(report: dict, add: Callable[[str], None], fmt: tuple[Callable, ...]) -> None:
  """The section of report.md: the primary metric by depth and source (scratch as the
  reference), then per fraction and point the pairs of sources at each depth."""
  section = report.get('sources')
  if not section:
    return
  ci, p_text, num = fmt
  s = report['statistics']
  names = [x['name'] for x in section['sources']]
  add('## Sources at each depth: which source, and how deep?\n')
  add('Every fine-tuning arm ran once from each source (runs `<source>:<arm>`), scratch once: '
      + '; '.join(f'`{x["name"]}` = `{x["init"]}`' for x in section['sources']) + '. Scratch '
      'loads no weights; it takes the first source\'s input convention. Pairs of sources: '
      f'difference A − B with its 95% paired-bootstrap interval over test '
      f'{report["unit_name"]}s, {s["rank_test"]}; family: {section["family"]}; '
      f'{s["correction_name"]} adjustment within each depth; marks from the adjusted p.\n')
  primary = next((p for p in report['points'] if p['key'] == report.get('primary_metric')),
                 None)
  for f in sorted({r['fraction'] for r in report['rows']}):
    rows = {r['arm']: r for r in report['rows'] if r['fraction'] == f}
    if primary is not None:
      def cell(arm: str) -> str:
        return ci(((rows.get(arm) or {}).get('metrics') or {}).get(primary['key']),
                  primary['digits'])
      add(f'### Fraction {f:g}: {primary["label"]}'
          + (f' ({primary["unit"]})' if primary['unit'] else '') + ' by depth and source\n')
      add('| depth | ' + ' | '.join(names) + ' |')
      add('|---|' + '---|' * len(names))
      for depth in section['depths']:
        add(f'| {depth} | ' + ' | '.join(cell(sources.qualified(n, depth)) for n in names)
            + ' |')
      for arm in (a for a in rows if tuning.is_scratch(a)):
        add(f'| {arm} (reference, no source) | ' + ' | '.join([cell(arm)] * len(names)) + ' |')
      add('')
    at_f = [t for t in section['tables'] if t['fraction'] == f]
    for key in dict.fromkeys(t['point'] for t in at_f):  # one markdown table per point
      point_tables = [t for t in at_f if t['point'] == key]
      t = point_tables[0]
      better = 'higher' if t['higher_is_better'] else 'lower'
      add(f'### Fraction {f:g}: {t["label"]}' + (f' ({t["unit"]})' if t['unit'] else '')
          + f', pairs of sources at each depth — {better} is better\n')
      add('| depth | source A | source B | A − B [95% CI] | n | W | p (raw) | p (adj.) | mark |')
      add('|---|---|---|---|---|---|---|---|---|')
      digits = 1 if t['unit'] == 'µm' else 3
      for u in point_tables:
        for x in u['rows']:
          diff = ci({'value': x.get('difference'), 'low': x.get('low'), 'high': x.get('high')},
                    digits)
          add(f'| {u["depth"]} | {x["source_a"]} | {x["source_b"]} | {diff} | {x.get("n", 0)} | '
              f'{num(x.get("statistic"), 1)} | {p_text(x.get("p_raw"))} | '
              f'{p_text(x.get("p_adjusted"))} | {x.get("mark") or ""} |')
      add('')


def scratch_reference(rows: Sequence[dict], fraction: float, key: str) -> list[tuple[str, Any]]:
  """(arm, metric entry) of each scratch arm at `fraction` (the plot's horizontal lines)."""
  return [(r['arm'], (r.get('metrics') or {}).get(key)) for r in rows
          if r['fraction'] == fraction and tuning.is_scratch(r['arm'])
          and (r.get('metrics') or {}).get(key, {}).get('value') is not None]
