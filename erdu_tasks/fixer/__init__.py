"""The fixer's engine: runbooks (YAML), the checks that validate a fix, and one module per action in actions/.

May import: store, model, names, errors, settings. The decision of what to run is roles.fixer's."""
