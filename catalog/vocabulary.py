"""Words of the catalog the command line offers: mixture weightings, the datasets view's columns.

Light on purpose: the CLI declares its options and help with these, and `kalmix --help` must
not load DuckDB or Arrow, so this module imports nothing.
"""

# How a mixture weights its datasets (`catalog.mixtures.plan` applies them).
WEIGHTINGS: tuple[str, ...] = ("proportional", "uniform", "temperature", "explicit")

# The columns of `datasets_view` (its SQL: `catalog/schema.py`), as help and WHERE errors list them.
DATASETS_VIEW_COLUMNS = (
    "name, category, task_type, domain, language (most common), languages (list), rows, "
    "latest_version, tags (list), source, is_eval, last_operation, stats (JSON), created_at, "
    "updated_at"
)

# What `kalmix mix attribute` attributes effects to, and how (`catalog.attributions` stores them;
# auto: the regression where the mixture came from a search, else leave-one-out runs).
ATTRIBUTION_UNITS: tuple[str, ...] = ("dataset", "category")
ATTRIBUTION_METHODS: tuple[str, ...] = ("auto", "regression", "leave-one-out")
