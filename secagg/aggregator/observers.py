"""The aggregator's observers: Prometheus metrics and TensorBoard scalars, fed by its audit log.

The arrows point down: ``secagg.metrics`` and ``secagg.tensorboard`` know nothing of the federation;
this module, on the aggregator's side, wires them to it (audit listeners, the store's rounds, and the
byte counter the gRPC service calls).
"""

from __future__ import annotations

from secagg.aggregator.federation import Federation
from secagg.aggregator.hub import FederationHub
from secagg.metrics import AggregatorMetrics
from secagg.tensorboard import RoundScalars


def observe(fed: FederationHub | Federation) -> AggregatorMetrics:
    """Attach every observer an aggregator runs; returns the metrics, whose ``sent`` is the service's
    byte counter and whose ``serve(kit.config.metrics_port)`` exposes them."""
    RoundScalars(fed.audit, fed.store.rounds, fed.state_dir / "jobs")
    return AggregatorMetrics(fed)


__all__ = ["observe"]
