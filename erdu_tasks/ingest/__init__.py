"""Ingest: the one entry every producer path calls (accept), the wire formats it understands (formats/), and detection (detect/: rules, fingerprints, folding).

May import: store, model, names, errors, settings, catalog. Never celery."""
