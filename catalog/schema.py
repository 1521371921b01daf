"""Catalog schema as an ordered list of migrations; `schema_version` records which ran.

A migration is appended, never edited, so an old workspace upgrades in place when a newer
kalmix opens it.
"""

from __future__ import annotations

import duckdb

from catalog.taxonomy import load_taxonomy

MIGRATIONS: list[str] = [
    # v1: the tables of the design
    """
    CREATE TABLE schema_version(version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT now());
    CREATE TABLE categories(
        name VARCHAR PRIMARY KEY, task_type VARCHAR NOT NULL, domain VARCHAR,
        languages VARCHAR[], description VARCHAR, instruction VARCHAR);
    CREATE TABLE datasets(
        name VARCHAR PRIMARY KEY, category VARCHAR NOT NULL, task_type VARCHAR NOT NULL,
        source VARCHAR, tags VARCHAR[], columns VARCHAR[], is_eval BOOLEAN DEFAULT false,
        created_at TIMESTAMP DEFAULT now());
    CREATE TABLE dataset_versions(
        dataset VARCHAR NOT NULL, version INTEGER NOT NULL, path VARCHAR NOT NULL,
        files VARCHAR[], rows BIGINT NOT NULL, content_hash VARCHAR NOT NULL,
        language VARCHAR, languages VARCHAR[],
        parent_dataset VARCHAR, parent_version INTEGER, operation VARCHAR NOT NULL,
        params JSON, stats JSON, created_at TIMESTAMP DEFAULT now(),
        PRIMARY KEY(dataset, version));
    CREATE TABLE removals(
        dataset VARCHAR NOT NULL, version INTEGER NOT NULL, id VARCHAR NOT NULL,
        reason VARCHAR NOT NULL, detail JSON);
    CREATE TABLE mixtures(name VARCHAR PRIMARY KEY, description VARCHAR,
        created_at TIMESTAMP DEFAULT now());
    CREATE TABLE mixture_versions(
        mixture VARCHAR NOT NULL, version INTEGER NOT NULL, spec JSON NOT NULL,
        manifest JSON NOT NULL, ids_path VARCHAR, rows BIGINT, content_hash VARCHAR,
        created_at TIMESTAMP DEFAULT now(), PRIMARY KEY(mixture, version));
    CREATE TABLE runs(
        name VARCHAR PRIMARY KEY, kind VARCHAR DEFAULT 'train', mixture VARCHAR,
        mixture_version INTEGER, base_model VARCHAR, config JSON, git_commit VARCHAR,
        status VARCHAR NOT NULL, path VARCHAR, pid INTEGER, started_at TIMESTAMP DEFAULT now(),
        finished_at TIMESTAMP, summary JSON, error VARCHAR);
    CREATE TABLE scores(
        run VARCHAR, model VARCHAR NOT NULL, is_reference BOOLEAN DEFAULT false,
        task VARCHAR NOT NULL, task_type VARCHAR, split VARCHAR, subset VARCHAR,
        main_score DOUBLE, metrics JSON, mteb_version VARCHAR,
        evaluated_at TIMESTAMP DEFAULT now());
    CREATE INDEX removals_dataset ON removals(dataset, version);
    CREATE INDEX scores_run ON scores(run);
    CREATE VIEW datasets_view AS
    SELECT d.name, d.category, d.task_type, c.domain, v.language, v.languages, v.rows,
           v.version AS latest_version, d.tags, d.source, d.is_eval, v.operation AS last_operation,
           v.stats, d.created_at, v.created_at AS updated_at
    FROM datasets d
    JOIN (SELECT * FROM dataset_versions
          QUALIFY row_number() OVER (PARTITION BY dataset ORDER BY version DESC) = 1) v
      ON v.dataset = d.name
    LEFT JOIN categories c ON c.name = d.category;
    """,
    # v2: categories added to the shipped taxonomy since (dictionary definitions, man pages,
    # package descriptions, docstrings, synonym pairs, word senses: `kalmix corpora`) reach
    # workspaces made before them; existing rows, edited or not, are left alone. `taxonomy` is
    # the shipped file, registered by `migrate`.
    """
    INSERT INTO categories
    SELECT name, task_type, domain, string_split(languages, ';'), description, instruction
    FROM taxonomy WHERE name NOT IN (SELECT name FROM categories);
    """,
    # v3: data attribution (`kalmix mix attribute`): the effect of each dataset or category of a
    # mixture version on each score mean, by leave-one-out proxy runs or a search's regression.
    """
    CREATE TABLE attributions(
        mixture VARCHAR NOT NULL, version INTEGER NOT NULL, unit_kind VARCHAR NOT NULL,
        method VARCHAR NOT NULL, unit VARCHAR NOT NULL, metric VARCHAR NOT NULL,
        effect DOUBLE, sd DOUBLE, n INTEGER, created_at TIMESTAMP DEFAULT now());
    CREATE INDEX attributions_mixture ON attributions(mixture, version);
    """,
]
LATEST_VERSION = len(MIGRATIONS)
# datasets_view's columns as --help and WHERE errors list them (keep in step with the view):
# `catalog.vocabulary.DATASETS_VIEW_COLUMNS`, which the CLI imports without DuckDB.


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Apply every migration newer than the database, then seed categories if empty.

    The shipped taxonomy is registered as the view `taxonomy` while they run.
    """
    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchall()[0][0]
    current = (
        con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
        if has_table
        else 0
    )
    con.register("taxonomy", load_taxonomy())  # the shipped file, for migrations that read it
    try:
        for number, sql in enumerate(MIGRATIONS, start=1):
            if number <= current:
                continue
            con.execute(sql)
            con.execute("INSERT INTO schema_version(version) VALUES (?)", [number])
        if con.execute("SELECT count(*) FROM categories").fetchall()[0][0] == 0:
            con.execute(
                "INSERT INTO categories SELECT name, task_type, domain, "
                "string_split(languages, ';'), description, instruction FROM taxonomy"
            )
    finally:
        con.unregister("taxonomy")
