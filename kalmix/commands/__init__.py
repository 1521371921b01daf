"""Sub-apps of the `kalmix` console script that join several packages.

Start-up: `kalmix --help`, a command's `--help` and a bad option must answer without loading
Arrow, polars, DuckDB, torch or an operator, so a module here imports at its top only typer,
rich, `corpus.console`, `corpus.errors`, `kalmix.commands.options` and the light `vocabulary`
modules (`corpus`, `catalog`, `synth`) its option declarations need. Everything else is imported
inside the command that uses it (`options.open_catalog` for the workspace's catalog).
`tests/kalmix/test_startup.py` checks it; `benchmarks/startup.py` measures it.
"""
