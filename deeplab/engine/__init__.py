"""Training, evaluation and checkpoints: the only code below the CLI that reads config objects."""
