"""A site whose clock is 10 minutes off (issue #18): what the checks that read the clock decide, with
the harness's own skew (``SECAGG_CHAOS_CLOCK``, :func:`secagg.chaos.shim.skew_clock`) in a fresh
process, against evidence and certificates made at the real time.

Documented behaviour (``attestation/validate.py``, the policy's ``attestation.max_age_s``): dev-TEE
evidence is accepted when its age is within [-60 s, max_age_s]; a certificate is valid from its
``not_before`` (provisioning time minus 5 minutes, ``provision/ca.py``) to its ``not_after``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, os, sys
import datetime as real_dt
from cryptography.hazmat.primitives.asymmetric import ec
from attestation.devtee import make_dev_evidence, parse_dev_evidence
from attestation.options import ValidationOptions
from attestation import validate
from attestation.errors import ValidationError
from secagg.provision.ca import issue_cert, make_ca

key = ec.generate_private_key(ec.SECP384R1())
evidence = parse_dev_evidence(make_dev_evidence(key, b"m" * 48, b"r"))  # made now, at the real time
ca_key, ca = make_ca("p", 30)
_, cert = issue_cert(ca_key, ca, name="site-1", org="o", role="site", days=30)  # as provisioning does
from secagg.chaos.shim import skew_clock
skew_clock(float(sys.argv[1]))
from secagg.provision.identity import IdentityError, verify_cert
out = {}
for max_age in (300, 3600):
    try:
        validate.validate_dev(evidence, ValidationOptions(max_age_s=max_age))
        out[f"evidence max_age {max_age}"] = True
    except ValidationError as exc:
        out[f"evidence max_age {max_age}"] = str(exc)
try:
    verify_cert(cert, ca)
    out["certificate"] = True
except IdentityError as exc:
    out["certificate"] = str(exc)
print(json.dumps(out))
"""


def _probe(skew: float) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(skew)], capture_output=True, text=True, timeout=120, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("skew", "want"),
    [
        # ahead: evidence looks 600 s old: past a 300 s max age (tee_stale), within 3600 s
        (
            600.0,
            {"evidence max_age 300": "timestamp (age 60", "evidence max_age 3600": True, "certificate": True},
        ),
        # behind: evidence from 600 s in the future (past the 60 s allowance): refused at any max age;
        # a certificate issued in the last 5 minutes is not valid yet
        (
            -600.0,
            {
                "evidence max_age 300": "timestamp (age -",
                "evidence max_age 3600": "timestamp (age -",
                "certificate": "not valid yet",
            },
        ),
        (0.0, {"evidence max_age 300": True, "evidence max_age 3600": True, "certificate": True}),
    ],
)
def test_a_skewed_site_refuses_or_accepts_as_documented(skew: float, want: dict[str, object]) -> None:
    got = _probe(skew)
    for what, expected in want.items():
        if expected is True:
            assert got[what] is True, (what, got[what])
        else:  # refused, naming why
            assert isinstance(got[what], str) and str(expected) in str(got[what]), (what, got[what])
