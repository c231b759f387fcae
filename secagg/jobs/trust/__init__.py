"""Sigstore trusted roots shipped with secagg, so that sites verify bundles with no network."""
