"""The aggregation modes by name, and what each one asks of a job and of a site's policy: pure data.

The agent and the aggregator each have one object per mode (``agent/modes``, ``aggregator/modes``);
what the lower layers need to know about a mode (the job's schema, the policy checker, the admission
decision, ``policy explain``) is the row below, so that none of them branches on a mode's name and a
new mode is one row here plus its two objects.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModeTraits:
    name: str
    #: runs the mask protocol: the job needs mask settings, and the site's minimum threshold applies
    masked: bool
    #: sites send only to an attested enclave: the site's policy needs an ``attestation`` section
    attested: bool
    #: no single party sees one site's update in the clear (modes where distributed noise suffices)
    hides_single_update: bool
    #: distributed_gaussian's integer shares are summed exactly (Z_2^32) where no party outside an
    #: attested enclave sees one share: masked (``mask``, ``tee-mask``) or sealed to the enclave (``tee``)
    sums_shares: bool
    #: what ``policy explain`` says the mode does
    words: str


_ALL = (
    ModeTraits(
        "plain",
        False,
        False,
        False,
        False,
        "plain (the aggregator sees each update in the clear: baselines only)",
    ),
    ModeTraits(
        "he", False, False, False, False, "he (homomorphic encryption: the aggregator sees only ciphertexts)"
    ),
    ModeTraits(
        "mask",
        True,
        False,
        True,
        True,
        "mask (pairwise masking: the aggregator sees only masked vectors that cancel in the sum)",
    ),
    ModeTraits(
        "tee",
        False,
        True,
        False,
        True,
        "tee (updates are decrypted only inside an attested confidential VM)",
    ),
    ModeTraits(
        "tee-mask",
        True,
        True,
        True,
        True,
        "tee-mask (pairwise masking with the mask server inside an attested confidential VM: even the "
        "enclave sees only masked vectors)",
    ),
)

#: every mode, by the name jobs and policies use
MODES: dict[str, ModeTraits] = {m.name: m for m in _ALL}
NAMES: tuple[str, ...] = tuple(MODES)
ATTESTED: frozenset[str] = frozenset(m.name for m in _ALL if m.attested)


def traits(name: str) -> ModeTraits:
    return MODES[name]
