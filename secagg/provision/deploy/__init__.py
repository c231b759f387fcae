"""Deployment files generated with the startup kits: compose, Kubernetes and systemd.

Generators (``compose``, ``k8s``, ``systemd``) are pure functions of the project; ``writer`` does the
file I/O and keeps provisioning all-or-nothing. ``layout`` is the one place that says where the kit,
policy, data and state live, so that the image and every generated file agree.
"""

from secagg.provision.deploy.layout import TARGETS, DeployOptions
from secagg.provision.deploy.writer import parse_targets, provision_with_deploy, write_deploy

__all__ = ["TARGETS", "DeployOptions", "parse_targets", "provision_with_deploy", "write_deploy"]
