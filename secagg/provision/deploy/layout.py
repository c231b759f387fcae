"""Where things live inside a secagg container or on a site's server, and the options of one run.

Every generator reads these constants, so the Dockerfile, compose file, Kubernetes manifests and
systemd unit agree on one layout: the kit and policy are mounted read-only, the state directory is the
only place a process may write, and nothing secret is ever baked into the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from secagg import __version__

#: deployment targets that ``secagg provision --deploy`` understands, in the order they are written
TARGETS = ("compose", "k8s", "systemd")

#: the non-root user and group of the image (deploy/Dockerfile creates them with these ids)
UID = 10001
GID = 10001

# inside the container
KIT_DIR = "/etc/secagg/kit"
POLICY_DIR = "/etc/secagg/policy"
POLICY_FILE = f"{POLICY_DIR}/policy.yaml"
DATA_DIR = "/data"
STATE_DIR = "/var/lib/secagg"
#: Kubernetes only: the Secret is mounted here and copied to KIT_DIR with mode 0600 (see k8s.py)
KIT_SECRET_DIR = "/run/secagg/kit-secret"  # noqa: S105 - a path, not a secret
KIT_FILES = ("ca.pem", "cert.pem", "key.pem", "kit.yaml")

# on a site's server (systemd)
HOST_BIN = "/opt/secagg/bin/secagg"
HOST_KIT_DIR = "/etc/secagg/kit"
HOST_POLICY_FILE = "/etc/secagg/policy.yaml"
HOST_DATA_DIR = "/srv/secagg/data"
HOST_STATE_NAME = "secagg-agent"  # StateDirectory=, i.e. /var/lib/secagg-agent
HOST_GROUP = "secagg"
UNIT_NAME = "secagg-agent.service"

#: name of the folder under the workspace that holds the generated files
DEPLOY_DIRNAME = "deploy"


def health_command() -> list[str]:
    return ["secagg", "health", "--kit", KIT_DIR, "--state", STATE_DIR]


def aggregator_args() -> list[str]:
    return ["aggregator", "serve", "--kit", KIT_DIR, "--state", STATE_DIR]


def agent_args() -> list[str]:
    """A deployed agent is a service: ``--forever`` keeps it serving jobs after one finishes."""
    return [
        "agent",
        "run",
        "--kit",
        KIT_DIR,
        "--policy",
        POLICY_FILE,
        "--data",
        DATA_DIR,
        "--state",
        STATE_DIR,
        "--forever",
    ]


@dataclass(frozen=True)
class DeployOptions:
    """What the project file does not say but a deployment needs."""

    #: image reference for compose and Kubernetes; pin it by digest in production
    image: str = f"secagg:{__version__}"
