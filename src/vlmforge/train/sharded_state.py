"""`train.strategy: fsdp`: FSDP2 sharding of the model, and its full state for ordinary checkpoints.

    torchrun --nproc_per_node 8 -m vlmforge train instruct-full --train.strategy fsdp ...

Each transformer block (the classes the model lists in `_no_split_modules`) becomes one FSDP2
unit (`fully_shard`), the rest of the model the root unit: every rank keeps 1/N of each parameter,
its gradient and its AdamW moments. Checkpoints must not be shards: every rank takes part in
gathering the full trainable weights and optimizer state onto rank 0 (torch.distributed.checkpoint's
state-dict API, full_state_dict + cpu_offload), which writes an ordinary checkpoint — the same
files, names and optimizer layout as a one-process or DDP run — so `vlmforge export` and `--resume`
(under any strategy) read it as they read any other. Resuming scatters the full state back.

`FullState` and `FullOptimizerState` stand in for the model and the optimizer where the checkpoint
writer and reader expect them: they hold whole tensors by parameter name.
"""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger("vlmforge.train")


def use_fsdp(accelerator, strategy: str) -> bool:
    """True when this run shards with FSDP2: train.strategy fsdp and more than one process.

    Sharding set up by an accelerate config is refused: its checkpoints would hold each rank's
    shards, not the model (accelerate's FSDP plugin), or cannot be gathered here (DeepSpeed ZeRO-3).
    """
    from accelerate.utils import DistributedType

    from vlmforge.errors import ConfigError

    kind = accelerator.distributed_type
    zero3 = kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    if kind == DistributedType.FSDP or zero3:
        raise ConfigError(f"{'DeepSpeed ZeRO-3' if zero3 else 'accelerate FSDP'} shards the parameters and vlmforge "
                          "cannot write complete checkpoints from it: launch with torchrun (or an accelerate DDP "
                          "config) and --train.strategy fsdp")
    if strategy != "fsdp":
        return False
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError("train.strategy fsdp is not for a DeepSpeed launch: launch with torchrun")
    if accelerator.num_processes == 1:
        log.info("train.strategy fsdp with one process: nothing to shard, training unsharded")
        return False
    return True


def shard_model(model, device):
    """FSDP2 over all processes: one unit per transformer block, the root unit for the rest. In place."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # FSDP2 warns on every step that the root returns a view (LLaVA's image_hidden_states): harmless
    # here, the loss (steps.summed_loss) never changes the model's outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks = set(_base_model(model)._no_split_modules or ())
    units = [module for module in model.modules() if type(module).__name__ in blocks]
    for module in units:
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    log.info("FSDP2: %d blocks + root sharded over %d processes", len(units), dist.get_world_size())
    return model


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def trainable_names(model) -> list[str]:
    """Trainable parameter names, as `model.named_parameters()` (and so a checkpoint) spells them."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def gather_full_state(model, optimizer) -> tuple[dict, dict]:
    """(trainable weights, optimizer state) as whole CPU tensors on rank 0, empty dicts elsewhere.

    A collective: every rank must call it. The optimizer state comes back keyed by position, as
    `torch.optim.Optimizer.state_dict()` writes it, not by name.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    names = trainable_names(model)
    weights = get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not weights:  # ranks other than 0
        return {}, {}
    return {name: weights[name] for name in names}, _by_position(optimizer_state, _optimizer_names(model, optimizer))


def scatter_full_state(model, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Load whole trainable weights and a position-keyed optimizer state into the sharded model (every rank)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_options(strict=False))
    named = _by_name(optimizer_state, _optimizer_names(model, optimizer))
    set_optimizer_state_dict(model, optimizer, optim_state_dict=named, options=_options())


def _optimizer_names(model, optimizer) -> list[str]:
    """Parameter names in the order the optimizer numbers them (group by group)."""
    name_of = {id(parameter): name for name, parameter in model.named_parameters()}
    return [name_of[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


def _by_position(state: dict, names: list[str]) -> dict:
    """A name-keyed optimizer state dict → the position-keyed layout of `Optimizer.state_dict()`."""
    position = {name: index for index, name in enumerate(names)}
    groups = [{**group, "params": [position[name] for name in group["params"]]} for group in state["param_groups"]]
    return {"state": {position[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def _by_name(state: dict, names: list[str]) -> dict:
    groups = [{**group, "params": [names[index] for index in group["params"]]} for group in state["param_groups"]]
    return {"state": {names[index]: value for index, value in state["state"].items()}, "param_groups": groups}


class FullState:
    """Whole tensors by parameter name, shown as parameters: what the checkpoint writer saves, or
    what its reader checks (names, shapes) and copies into."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    @classmethod
    def receiving(cls, model) -> FullState:
        """Empty whole-size tensors for `model`'s trainable parameters (a DTensor's shape is the whole one)."""
        import torch

        return cls({name: torch.empty(parameter.shape, dtype=parameter.dtype).requires_grad_(True)
                    for name, parameter in model.named_parameters() if parameter.requires_grad})

    def named_parameters(self):
        for name, tensor in self.tensors.items():
            yield name, tensor if tensor.requires_grad else tensor.requires_grad_(True)


class FullOptimizerState:
    """A position-keyed optimizer state dict, shown as an optimizer to the checkpoint writer and reader."""

    def __init__(self, state: dict | None = None):
        self.state = state or {}

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def clip_grad_norm(parameters: list, max_norm: float):
    """The global gradient norm over sharded gradients (clipped to `max_norm` when > 0); a collective."""
    import torch
    from torch.distributed.tensor import DTensor

    total = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if isinstance(total, DTensor):
        total = total.full_tensor()  # each rank holds the norm of its shards: combine them
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total
