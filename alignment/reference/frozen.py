"""A frozen (inference-only) model placed for the run's distributed backend."""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn


def prepare_frozen_model(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """Place a frozen (inference-only) model for the run's backend. Under ZeRO-3 it is
    sharded like the policy; under ZeRO-1/2 each process holds a full copy (stage 0);
    under FSDP it is wrapped like the policy. TRL's helpers do exactly this."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(model, accelerator)
    if accelerator.distributed_type == DistributedType.FSDP:
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(model, accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True)
