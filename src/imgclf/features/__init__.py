"""What is computed from a network's features: bottleneck features (cached), a linear head fitted on
them, and the likely wrong labels they reveal (`check --labels`)."""
