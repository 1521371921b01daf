"""Data attribution in the catalog: what each dataset (or category) of a mixture version does
to each score mean, as `kalmix mix attribute` measured it.

One row per (mixture version, unit kind, method, unit, metric): `effect` is the metric of the
mixture minus the metric of the mixture without the unit, `sd` its spread over seeds (leave-one-
out) when there is one, `n` the seeds or trials behind it. Recording an attribution replaces the
earlier one of the same mixture version, unit kind and method, in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa

from catalog.db import Catalog


@dataclass(frozen=True)
class Effect:
    unit: str
    metric: str
    effect: float | None
    sd: float | None
    n: int


def record_attribution(
    cat: Catalog,
    *,
    mixture: str,
    version: int,
    unit_kind: str,
    method: str,
    effects: Sequence[Effect],
) -> None:
    """Replace the attribution of (mixture version, unit kind, method) with `effects`."""
    table = pa.Table.from_pylist(
        [{"mixture": mixture, "version": version, "unit_kind": unit_kind, "method": method,
          **asdict(e)} for e in effects]
    )  # fmt: skip
    key = [mixture, version, unit_kind, method]
    with cat.write() as con:
        con.execute(
            "DELETE FROM attributions WHERE mixture = ? AND version = ? AND unit_kind = ? "
            "AND method = ?",
            key,
        )
        con.register("new_effects", table)
        con.execute(
            "INSERT INTO attributions(mixture, version, unit_kind, method, unit, metric, effect,"
            " sd, n) SELECT mixture, version, unit_kind, method, unit, metric, effect, sd, n"
            " FROM new_effects"
        )
        con.unregister("new_effects")


def read_attribution(cat: Catalog, *, mixture: str, version: int, unit_kind: str) -> pa.Table:
    """The stored effects of a mixture version by unit kind (every method), latest first."""
    return cat.query(
        "SELECT method, unit, metric, effect, sd, n, created_at FROM attributions"
        " WHERE mixture = ? AND version = ? AND unit_kind = ? ORDER BY method, unit, metric",
        [mixture, version, unit_kind],
    )
