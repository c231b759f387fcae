"""CLI sub-command groups.

Each module here exposes ``register(subparsers)``, adding its sub-command(s) and setting
``func`` on the parser to a callable ``(args) -> int``. ``secagg.cli`` discovers them, so a new
command group is one new file and touches nothing else.
"""
