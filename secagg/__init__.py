"""secagg: secure aggregation for cross-silo federated learning."""

__version__ = "0.1.0"
