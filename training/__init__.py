"""Training, evaluation and baselines for AnoDODE (run as ``python -m training.<script>`` from the repo root)."""
