"""The store: Postgres is the source of truth. Connections, migrations, incidents (compare-and-set transitions), learning history, stats, metrics and the reconciler's queries.

May import: model, names, errors, settings and the standard library; psycopg lives here and nowhere above."""
