"""The model lifecycle: the registry (aliases), the promotion gate and `r3p retrain`."""
