"""The aggregator: round orchestration, per-mode combination of protected updates, durable state."""
