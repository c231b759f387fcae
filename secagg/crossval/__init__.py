"""Cross-site evaluation's wire: what sites and the aggregator exchange after a job's last round.

- :mod:`~secagg.crossval.seal`: a site's signed consent, and its local model sealed to one other site.
- :mod:`~secagg.crossval.wire`: topic names and the bounds on the metrics an evaluation may send.
- :mod:`~secagg.crossval.matrix`: the metrics matrix the aggregator writes (JSON and heat-map PNG).

The workflow itself is :mod:`secagg.agent.evaluation` (a site) and :mod:`secagg.aggregator.evaluation`
(the aggregator). Nothing here knows gRPC, the agent or the aggregator.
"""
