"""The fault and load harness behind ``secagg chaos`` (issue #18): real aggregator and agent processes
on 127.0.0.1, a numpy-only job whose update is a pure function of (site, round), faults injected at
named points of a round, and checks afterwards (rounds, final model, ledgers, audit chains, leftovers).

Nothing here is imported by the aggregator or the agent: the kill points are installed by
:mod:`secagg.chaos.shim`, a test-only launcher the harness starts the production CLI through.
"""
