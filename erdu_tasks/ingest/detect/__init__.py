"""Detection: classification rules, fingerprints and storm folding."""
