"""The DuckDB catalog: the only code that writes `catalog.duckdb`."""
