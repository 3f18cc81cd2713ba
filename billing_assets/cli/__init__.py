"""The `billing` console script: registry sync, status, demo."""
