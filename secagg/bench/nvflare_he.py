"""NVIDIA FLARE 2.9's own HE code path, run in-process for a side-by-side measurement (``nvflare-he``).

Everything that touches the update is NVFlare's code, not a re-implementation:

* keys: ``nvflare.lighter.impl.he.HEBuilder`` (CKKS, N=8192, coeff moduli [60, 40, 40], scale 2^40)
  makes the context; sites load the client context and the server the server context, as the startup
  kits would;
* site: ``HEModelEncryptor`` (weigh by local iterations, then one CKKS vector per layer), the DXO put in
  a Shareable, serialised with FOBS (its ``CKKSVectorDecomposer`` attaches a serialised context to every
  encrypted layer);
* aggregator: FOBS deserialisation, ``HEInTimeAccumulateWeightedAggregator.accept`` per site (in-time
  accumulation), ``aggregate`` (the 1/sum-of-weights plaintext multiply), FOBS serialisation;
* site: FOBS deserialisation and ``HEModelDecryptor``.

Only the framework around them (workspace loading, the cell transport) is replaced: contexts are set on
the filters directly, and FL contexts carry just the properties these components read.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from secagg.errors import ConfigError

from .clock import Lap, clock, lap
from .workload import Workload

INSTALL_HINT = "pip install 'secagg[bench]' (or: pip install nvflare==2.9.0)"
_ROUND = 0


def require_nvflare() -> str:
    """The installed NVFlare version; ConfigError with the install command if it is missing."""
    try:
        import nvflare
        from nvflare.app_opt.he.model_encryptor import HEModelEncryptor  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"--compare nvflare needs NVIDIA FLARE 2.9 ({exc}); install it: {INSTALL_HINT}"
        ) from None
    return str(getattr(nvflare, "__version__", "unknown"))


def _fl_ctx(identity: str | None = None, peer: str | None = None) -> Any:
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.app_constant import AppConstants

    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, _ROUND, private=True, sticky=False)
    if identity is not None:
        ctx.set_prop(ReservedKey.IDENTITY_NAME, identity, private=False, sticky=False)
    if peer is not None:
        peer_ctx = FLContext()
        peer_ctx.set_prop(ReservedKey.IDENTITY_NAME, peer, private=False, sticky=False)
        ctx.set_peer_context(peer_ctx)
    return ctx


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """TenSEAL prints a warning to C++ std::cout for every layer over one ciphertext; keep stdout clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _silence_nvflare_logs() -> None:
    import logging

    logging.getLogger("nvflare").setLevel(logging.ERROR)


class NVFlareHEMode:
    name = "nvflare-he"

    def setup(self, work: Path, wl: Workload) -> dict[str, Any]:
        version = require_nvflare()
        import tenseal as ts
        from nvflare.lighter.impl.he import HEBuilder

        _silence_nvflare_logs()
        builder = HEBuilder()  # NVFlare's defaults: CKKS, 8192, [60, 40, 40], 2**40
        builder.initialize(None, None)  # type: ignore[arg-type]  # HEBuilder.initialize uses neither argument
        self.client_ctx_bytes = builder.get_serialized_context(is_client=True)
        (work / "nvflare-server.tenseal").write_bytes(builder.get_serialized_context(is_client=False))
        self.ts_client = ts.context_from(self.client_ctx_bytes)
        (work / "spec.json").write_text(wl.spec.to_json())
        return {
            "nvflare_version": version,
            "he_params": f"CKKS N={builder.poly_modulus_degree} q={builder.coeff_mod_bit_sizes} "
            f"2**{builder.scale_bits} (NVFlare HEBuilder)",
        }

    def _encryptor(self) -> Any:
        from nvflare.app_opt.he.model_encryptor import HEModelEncryptor

        enc = HEModelEncryptor(weigh_by_local_iter=True)
        enc.tenseal_context = self.ts_client
        enc.encrypt_layers = [True]  # what its START_RUN handler sets when no layer list is given
        return enc

    def protect_all(self, work: Path, wl: Workload) -> list[Lap]:
        from nvflare.apis.dxo import DXO, DataKind, MetaKey
        from nvflare.apis.fl_constant import ReservedKey
        from nvflare.app_common.app_constant import AppConstants
        from nvflare.fuel.utils import fobs

        times: list[Lap] = []
        for i, name in enumerate(wl.names):
            bundle = wl.spec.unflatten(wl.update(i))
            enc = self._encryptor()
            fl_ctx = _fl_ctx(peer="server")
            fl_ctx.get_peer_context().set_prop(ReservedKey.IDENTITY_NAME, name, private=False, sticky=False)
            t0 = clock()
            dxo = DXO(
                data_kind=DataKind.WEIGHT_DIFF,
                data=dict(bundle),
                meta={MetaKey.NUM_STEPS_CURRENT_ROUND: int(wl.counts[i])},
            )
            shareable = dxo.to_shareable()
            with _quiet_stdout():
                out = enc.process(shareable, fl_ctx)
            out.set_peer_props({ReservedKey.IDENTITY_NAME: name})
            out.add_cookie(AppConstants.CONTRIBUTION_ROUND, _ROUND)
            data = fobs.dumps(out)
            times.append(lap(t0))
            (work / f"up-{i}").write_bytes(data)
            del data, out, shareable, dxo, bundle
        return times

    def uplink_bytes(self, work: Path, site: int) -> int:
        return (work / f"up-{site}").stat().st_size

    def downlink_bytes(self, work: Path, site: int) -> int:
        return (work / "down-0").stat().st_size

    def unprotect(self, work: Path, wl: Workload, site: int) -> tuple[Lap, np.ndarray]:
        from nvflare.apis.dxo import from_shareable
        from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
        from nvflare.fuel.utils import fobs

        dec = HEModelDecryptor()
        dec.tenseal_context = self.ts_client
        data = (work / "down-0").read_bytes()
        fl_ctx = _fl_ctx(identity=wl.names[site], peer="server")
        t0 = clock()
        shareable = fobs.loads(data)
        dxo = from_shareable(shareable)
        plain = dec.process_dxo(dxo, shareable, fl_ctx)
        if plain is None:
            raise ConfigError("NVFlare's HEModelDecryptor did not decrypt the aggregate")
        out = np.concatenate(
            [np.asarray(plain.data[t.name], dtype=np.float64)[: t.size] for t in wl.spec.tensors]
        )
        return lap(t0), out


class NVFlareHEAggregator:
    def prepare(self, work: Path, sites: int) -> None:
        require_nvflare()
        import tenseal as ts
        from nvflare.apis.dxo import DataKind
        from nvflare.apis.event_type import EventType
        from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator

        _silence_nvflare_logs()
        self.work, self.sites = work, sites
        # the server context NVFlare's server loads (no secret key); its aggregator never touches it:
        # every ciphertext brings its own context through the FOBS decomposer
        self.server_ctx = ts.context_from((work / "nvflare-server.tenseal").read_bytes())
        self.fl_ctx = _fl_ctx(identity="server")
        # weigh_by_local_iter=False: the encryptor already weighed, as in NVFlare's HE examples
        self.agg = HEInTimeAccumulateWeightedAggregator(
            expected_data_kind=DataKind.WEIGHT_DIFF, weigh_by_local_iter=False
        )
        self.agg.handle_event(EventType.START_RUN, self.fl_ctx)
        import nvflare.fuel.utils.fobs  # noqa: F401  (start-up cost, not round cost)

    def run(self) -> None:
        from nvflare.fuel.utils import fobs

        for i in range(self.sites):
            shareable = fobs.loads((self.work / f"up-{i}").read_bytes())
            if not self.agg.accept(shareable, self.fl_ctx):
                raise ConfigError(f"NVFlare's aggregator refused site {i + 1}'s contribution")
            del shareable
        result = self.agg.aggregate(self.fl_ctx)
        (self.work / "down-0").write_bytes(fobs.dumps(result))
