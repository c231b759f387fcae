"""Project CA, participant identities and startup kits.

The provisioner makes the CA and one kit per participant. It never makes or holds an HE secret key:
that is made by the key-holder site at its first start (see ``secagg.he.custody``).
"""
