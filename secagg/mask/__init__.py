"""Pairwise-masking secure aggregation with dropout recovery (Bonawitz et al. 2017, SecAgg+ 2020).

A pure protocol library: state machines for the site (:class:`MaskClient`) and the aggregator
(:class:`MaskServer`) that exchange opaque byte messages, plus an in-memory driver (:mod:`.sim`).
The weight of each site rides as one extra masked element at the end of its vector, so the
aggregator learns only the total weight of the sites that survived.
"""

from secagg.mask.client import MaskClient
from secagg.mask.config import (
    MaskConfig,
    check_threshold,
    neighbourhood,
    recommended_neighbours,
    recommended_threshold,
)
from secagg.mask.errors import ProtocolViolation, RoundAborted, UnmaskRefused
from secagg.mask.messages import AdvertiseKeys, EncryptedShare, MaskedInput, UnmaskRequest, UnmaskResponse
from secagg.mask.prg import expand
from secagg.mask.quantize import dequantize, quantisation_bound, quantize
from secagg.mask.server import MaskServer

__all__ = [
    "AdvertiseKeys",
    "EncryptedShare",
    "MaskClient",
    "MaskConfig",
    "MaskServer",
    "MaskedInput",
    "ProtocolViolation",
    "RoundAborted",
    "UnmaskRefused",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_threshold",
    "dequantize",
    "expand",
    "neighbourhood",
    "quantisation_bound",
    "quantize",
    "recommended_neighbours",
    "recommended_threshold",
]
