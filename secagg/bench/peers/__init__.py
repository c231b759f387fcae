"""The peers' side of ``secagg bench --demo-compare``: scripts that run inside each peer's own virtual
environment (``bench-out/peers/<name>-venv``), never imported by secagg itself.

Every script here runs the demo's job as it is: the demo's own ``train.py`` (copied next to it as
``demo_train.py``: the same model, data loading, training loop and AUC), the demo's data split (written
by the bench as ``data/site-N/{train,val}.npz``) and hyper-parameters (``params.json``). Each writes
``result.json`` (per-round seconds, the peer's version) and ``final.npz`` (the final global model) to
its ``--out`` folder; the bench evaluates that model itself, as it evaluates secagg's.
"""
