"""The tables: what each one holds, how a table is named, and how it is written.

A table argument containing ``/`` (or a URI scheme) is a Delta path; anything else is a
metastore / Unity Catalog name (``table``, ``schema.table``, ``catalog.schema.table``).
Every write is an insert-only MERGE on the table's key, so a re-run or a retried task never
duplicates a row. One module per job:

- :mod:`~longattn_spark.tables.schemas`: ``TableSpec`` and every table's schema, key,
  partitioning and column comments (``WINDOWS``, ``SCORES``, ...), and comparing schemas;
- :mod:`~longattn_spark.tables.refs`: ``TableRef``, a table as given on the command line
  (read, version, SQL name), quoting for SQL, its properties;
- :mod:`~longattn_spark.tables.writes`: creating a table (and the race of two jobs creating
  it), adding the columns a newer version has, recording properties, the insert-only MERGE;
- :mod:`~longattn_spark.tables.retries`: Delta's write conflicts, recognized and retried;
- :mod:`~longattn_spark.tables.staging`: a DataFrame computed once and cut from its lineage
  (``materialize``) before the job writes the tables it reads.

The scores_rejects reasons are :mod:`longattn_spark.reasons`.
"""
