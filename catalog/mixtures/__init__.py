"""Versioned data mixtures: which dataset versions, in what proportions, how many rows, frozen.

A `MixtureSpec` (a SQL `WHERE` over `datasets_view` or an explicit list of `NAME[@vN]`; a
weighting; caps; a budget; a seed) resolves to a manifest of exact dataset versions with the
rows each contributes, and the sampled rows are stored, so `name@vN` always yields the same
training rows, whatever versions are registered later.

Decisions, written down here because every caller depends on them:

- Pinning. A `WHERE` or a bare name pins the latest version at creation time; `NAME@vN` pins
  that version. Datasets marked `is_eval` are never selected: a `WHERE` skips them, naming one
  is an error (evaluation data must not leak into training).
- Weights. proportional: w = n (rows available); uniform: w = 1; temperature: w = n^(1/tau)
  (tau > 1 flattens toward uniform, tau = 1 is proportional, tau < 1 favours large datasets);
  explicit: the user's weights. The manifest's `weight` is the normalised target share.
- Caps and budget. Each dataset has an upper bound: its row cap, its share cap times the budget,
  and (unless `allow_repeat`) its rows available. With a budget, rows are water-filled: each
  dataset gets its share of the budget, a capped dataset keeps its cap and the excess is spread
  over the others by weight; a budget that cannot be met is an error. Without a budget the
  shares are kept exactly (share caps water-filled first) and the total is the largest that
  fits every dataset without repeating a row. Fractional rows are rounded by largest remainder.
- Sampling. Each dataset draws from its own generator seeded by (seed, dataset, version), so
  adding a dataset to a spec leaves the others' rows unchanged. The rows taken are a prefix of
  one seeded permutation (a bigger budget adds rows, it never reshuffles); with `allow_repeat`
  every row is repeated floor(t/n) times and the remainder is drawn without replacement.
- Storage. Ids are not unique within a dataset (exact duplicates share one), so the sampled
  rows are stored as positions: (dataset, version, file index, row index, id), sorted by
  dataset then position, in `<ws>/mixtures/<name>/v<N>/rows.parquet`. It is written in a
  staging folder and renamed into place inside the transaction that inserts the catalog row,
  the same rule as dataset versions. The stored id is checked against the data on every read.
- Instructions. A per-dataset instruction in the spec replaces the rows' `instruction`; else
  the category's default instruction fills rows that have none.
"""

from catalog.mixtures.plan import plan_mixture
from catalog.mixtures.read import SHARD_SCHEMA, iter_dataset_tables, materialize
from catalog.mixtures.report import composition, diff_mixtures, manifest_table
from catalog.mixtures.spec import (
    ManifestEntry,
    MixtureRef,
    MixtureSpec,
    MixtureVersion,
    read_spec_toml,
)
from catalog.mixtures.store import (
    ROWS_FILE,
    ROWS_SCHEMA,
    create_mixture,
    list_mixtures,
    mixtures_dir,
    resolve_mixture,
)
from catalog.vocabulary import WEIGHTINGS

__all__ = [
    "ROWS_FILE",
    "ROWS_SCHEMA",
    "SHARD_SCHEMA",
    "WEIGHTINGS",
    "ManifestEntry",
    "MixtureRef",
    "MixtureSpec",
    "MixtureVersion",
    "composition",
    "create_mixture",
    "diff_mixtures",
    "iter_dataset_tables",
    "list_mixtures",
    "manifest_table",
    "materialize",
    "mixtures_dir",
    "plan_mixture",
    "read_spec_toml",
    "resolve_mixture",
]
