"""The hardened site agent: admission, training runner, protection, upload."""
