"""DP-SGD for a training script written without it.

A security officer who requires record-level DP must not depend on every job author remembering a
wrapper call, and one training script should run unchanged at a site with DP-SGD and at one without.
The job's training worker (:mod:`secagg.agent.worker_main`) installs this runtime for each task whose
effective policy asks for ``dpsgd``, and removes it when the task is answered. It binds Opacus' own
pieces to what a PyTorch script does anyway:

- **the model** is the module the round's global weights are loaded into
  (``model.load_state_dict(client.receive())``). Opacus' per-example-gradient hooks are attached to it
  in place (``GradSampleHooks``: no wrapper module, so ``state_dict`` keys do not change). A model
  Opacus cannot privatise (BatchNorm, ...) is refused with Opacus' own reason.
- **the data loader** is the first ``torch.utils.data.DataLoader`` iterated while that model is in
  training mode with gradients enabled. Its batches are drawn by Opacus' ``DPDataLoader`` instead
  (Poisson sampling at rate ``1 / len(loader)``), which the RDP accounting assumes; shuffled
  fixed-size batches would not match it.
- **the optimizer** is the one that steps the model's parameters: a global step pre-hook runs
  ``DPOptimizer.pre_step`` (clip each example's gradient to ``max_grad_norm``, sum, add
  ``N(0, (z * max_grad_norm)^2)``, divide by the expected batch size) before the optimizer's own update,
  and Opacus' ``RDPAccountant`` counts the step. ``z`` is Opacus' ``get_noise_multiplier`` for the
  policy's ``target_epsilon`` / ``target_delta`` over ``epochs x len(loader)`` steps.

Memory: DP-SGD works inside the training worker, on the model the script trains and on one batch's
per-example gradients at a time (Opacus' ``grad_sample`` per parameter: batch size x model size while a
batch is processed). It needs the whole model in the worker's memory, as training does anyway, and
nothing of it is streamed; it adds no copy of the update at release (it spends budget, it does not
transform the update the agent releases).

The noise and the Poisson sampler draw from generators seeded from ``os.urandom``: a script that seeds
torch (most do, for reproducibility) must not make the noise predictable to whoever reads the job.

Refused, each with its reason (the agent declines the round; nothing is uploaded, nothing is debited):
a step before the global model was loaded, a step on a batch that did not come from the DP loader, a
second optimizer or loader, weights changed outside an optimizer step, more steps than the noise was
calibrated for, a step whose gradients have no per-example part, and a ``send`` of tensors that are not
the trained model's. The checks catch honest mistakes; a deliberately malicious job can subvert any
in-process check, so trust in the job's signers still matters (README, known limits).

Loss reduction is taken to be ``mean`` (PyTorch's default). A ``sum`` loss changes the update's scale,
not the privacy guarantee: clipping bounds every example's contribution either way. Gradient terms that
do not come from the model's forward pass (e.g. a FedProx proximal term) are replaced by the noisy
clipped sum, as in Opacus.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data import DataLoader

from secagg.client import TrainingRefused
from secagg.privacy.accounting import rdp_epsilon
from secagg.privacy.spend import Spend
from secagg.reasons import Reason

_NOT_FROM_LOADER = (
    "an optimizer step used a batch that did not come from the training DataLoader; iterate a "
    "torch.utils.data.DataLoader over the training set, in training mode, so that Opacus can "
    "Poisson-sample it"
)


class DpSgdRefused(TrainingRefused):
    """The training script did something DP-SGD cannot account for; the round must not be uploaded."""

    code: str = Reason.DPSGD_REFUSED


@dataclass(frozen=True)
class DpSgdSettings:
    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    epochs: int = 1

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> DpSgdSettings:
        return cls(
            float(spec["target_epsilon"]),
            float(spec["target_delta"]),
            float(spec["max_grad_norm"]),
            int(spec.get("epochs", 1)),
        )


def _private_generator() -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(os.urandom(8), "little"))
    return gen


@dataclass
class _Run:
    settings: DpSgdSettings
    model: torch.nn.Module | None = None
    param_ids: frozenset[int] = frozenset()
    hooks: Any = None
    loader: DataLoader[Any] | None = None
    dp_loader: DPDataLoader | None = None
    last_batch_from: Any = None
    optimizer: torch.optim.Optimizer | None = None
    dp: DPOptimizer | None = None
    accountant: RDPAccountant = field(default_factory=RDPAccountant)
    max_steps: int = 0
    snapshot: list[torch.Tensor] = field(default_factory=list)
    refused: str | None = None

    # ------------------------------------------------------------ failures
    def refuse(self, reason: str) -> DpSgdRefused:
        """Remember the first reason: a script that catches the exception still cannot send."""
        if self.refused is None:
            self.refused = f"DP-SGD: {reason}"
        return DpSgdRefused(self.refused)

    # ------------------------------------------------------------ model
    def bind(self, model: torch.nn.Module) -> None:
        if model is self.model:
            self._take_snapshot()
            return
        if self.optimizer is not None:
            raise self.refuse("the global model was loaded into a second module after training started")
        errors = [
            str(e).split(". ")[0]
            for e in ModuleValidator.validate(model, strict=False)
            if "training mode" not in str(e)
        ]
        if errors:
            raise self.refuse(
                "Opacus cannot compute per-example gradients for this model: " + "; ".join(errors)
            )
        if self.hooks is not None:
            self.hooks.remove_hooks()
        self.model = model
        self.param_ids = frozenset(id(p) for p in model.parameters())
        self.hooks = prepare_module(
            model, "hooks", wrap_model=False, batch_first=True, loss_reduction="mean", strict=False
        )
        self._take_snapshot()

    def _params(self) -> list[torch.nn.Parameter]:
        assert self.model is not None
        return [p for p in self.model.parameters() if p.requires_grad]

    def _take_snapshot(self) -> None:
        self.snapshot = [p.detach().clone() for p in self._params()]

    def _check_snapshot(self, when: str) -> None:
        if any(not torch.equal(p.detach(), s) for p, s in zip(self._params(), self.snapshot, strict=True)):
            raise self.refuse(f"the model's weights changed outside an optimizer step ({when})")

    # ------------------------------------------------------------ data
    def training_iter(self, loader: DataLoader[Any]) -> Any:
        """The batches a loader yields in training: Poisson-sampled for the training loader."""
        if self.loader is None:
            self.loader = loader
            self.dp_loader = DPDataLoader.from_data_loader(loader, generator=_private_generator())
        if loader is not self.loader:
            return _Tagged(_ORIG_ITER(loader), loader, self)
        assert self.dp_loader is not None
        return _Tagged(_ORIG_ITER(self.dp_loader), self.dp_loader, self)

    # ------------------------------------------------------------ optimizer
    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.refused:
            raise DpSgdRefused(self.refused)
        stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if self.model is None:
            raise self.refuse(
                "an optimizer stepped before the global model was loaded with "
                "model.load_state_dict(client.receive())"
            )
        if not stepped & self.param_ids:
            return  # an optimizer for something else; it cannot change the update
        if not stepped <= self.param_ids:
            raise self.refuse("an optimizer steps parameters outside the model the global weights went into")
        if self.optimizer is None:
            self._calibrate(optimizer)
        elif optimizer is not self.optimizer:
            raise self.refuse("a second optimizer steps the model; the noise is calibrated for one")
        if self.dp_loader is None or self.last_batch_from is not self.dp_loader:
            raise self.refuse(_NOT_FROM_LOADER)
        self._check_snapshot("before a step")
        if self.steps >= self.max_steps:
            raise self.refuse(
                f"more than {self.max_steps} optimizer steps (epochs={self.settings.epochs} x "
                f"{self.max_steps // self.settings.epochs} batches); the noise was calibrated for that many"
            )
        assert self.dp is not None
        if any(getattr(p, "grad_sample", None) is None for p in self.dp.params if p.grad is not None):
            raise self.refuse(
                "a gradient has no per-example part: the loss did not come from the model's forward pass "
                "in training mode"
            )
        if not self.dp.pre_step():
            raise self.refuse("Opacus skipped a step (virtual steps are not supported)")

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is not self.optimizer or self.dp is None:
            return
        for p in self.dp.params:
            p.grad_sample = None
            p.summed_grad = None
        self._take_snapshot()

    def _calibrate(self, optimizer: torch.optim.Optimizer) -> None:
        if self.loader is None or self.dp_loader is None:
            raise self.refuse(_NOT_FROM_LOADER)
        s = self.settings
        batches = len(self.loader)
        sample_rate = 1.0 / batches
        self.max_steps = s.epochs * batches
        z = get_noise_multiplier(
            target_epsilon=s.target_epsilon,
            target_delta=s.target_delta,
            sample_rate=sample_rate,
            steps=self.max_steps,
            accountant="rdp",
        )
        dataset_size = len(self.loader.dataset)  # type: ignore[arg-type]
        self.dp = DPOptimizer(
            optimizer,
            noise_multiplier=z,
            max_grad_norm=s.max_grad_norm,
            expected_batch_size=max(1, int(dataset_size * sample_rate)),
            loss_reduction="mean",
            generator=_private_generator(),
        )
        self.dp.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        self.optimizer = optimizer

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self.accountant.history)

    # ------------------------------------------------------------ receipt
    def receipt(self, sent: Mapping[str, Any]) -> list[Spend]:
        """What training released, checked against what the script sends."""
        if self.refused:
            raise DpSgdRefused(self.refused)
        if self.model is None:
            raise self.refuse(
                "the global model was never loaded with model.load_state_dict(client.receive())"
            )
        self._check_snapshot("before send")
        matched = 0
        for name, p in self.model.named_parameters():
            value = sent.get(name)
            if value is None:
                continue
            tensor = value.detach().cpu() if hasattr(value, "detach") else torch.as_tensor(value)
            if not torch.equal(tensor.to(p.dtype), p.detach().cpu()):
                raise self.refuse(f"the {name!r} sent is not the trained model's")
            matched += 1
        if not matched:
            raise self.refuse("the state_dict sent holds none of the trained model's parameters")
        delta = self.settings.target_delta
        return [
            Spend("dpsgd", rdp_epsilon([(z, q, n)], delta), delta, float(z), float(q), int(n))
            for z, q, n in self.accountant.history
        ]


class _Tagged:
    """An iterator that records which loader the latest batch came from."""

    def __init__(self, inner: Any, source: Any, run: _Run) -> None:
        self._inner, self._source, self._run = inner, source, run

    def __iter__(self) -> _Tagged:
        return self

    def __next__(self) -> Any:
        batch = next(self._inner)
        self._run.last_batch_from = self._source
        return batch

    def __len__(self) -> int:
        return len(self._inner)


_ORIG_ITER = DataLoader.__iter__
_RUN: _Run | None = None


def active() -> _Run | None:
    return _RUN


def install(settings: DpSgdSettings) -> _Run:
    """Patch this process (the training subprocess only) so that the script trains with DP-SGD."""
    global _RUN
    if _RUN is not None:
        raise RuntimeError("the DP-SGD runtime is already installed")
    run = _RUN = _Run(settings)
    from secagg.client import GlobalModel

    orig_load = torch.nn.Module.load_state_dict

    def load_state_dict(self: torch.nn.Module, state_dict: Mapping[str, Any], *a: Any, **kw: Any) -> Any:
        out = orig_load(self, state_dict, *a, **kw)
        if isinstance(state_dict, GlobalModel):
            run.bind(self)
        return out

    def data_loader_iter(self: DataLoader[Any]) -> Any:
        if isinstance(self, DPDataLoader) or run.model is None:
            return _ORIG_ITER(self)
        if run.model.training and torch.is_grad_enabled():
            return run.training_iter(self)
        return _Tagged(_ORIG_ITER(self), self, run)

    torch.nn.Module.load_state_dict = load_state_dict  # type: ignore[method-assign,assignment]
    DataLoader.__iter__ = data_loader_iter  # type: ignore[method-assign]
    register_optimizer_step_pre_hook(lambda opt, args, kw: run.before_step(opt))
    register_optimizer_step_post_hook(lambda opt, args, kw: run.after_step(opt))
    return run
