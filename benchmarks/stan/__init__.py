"""Stan side of the reference-problem benchmark (optional: needs the ``bench`` extra, pystan)."""
