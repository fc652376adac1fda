"""Layer 6: what the pages call: schemas, profiles, runs, artifacts, tables, figures, the CLI."""
