"""The weights that travel between a site and the server, as Flower `ArrayRecord`s.

Only what local training changes travels: the trainable parameters (with LoRA just the
adapters, with `train.freeze` not the frozen towers) and the running statistics of the
batch-norm layers among them (a CNN tower's; averaged like the weights, as FedAvg does with a
whole state dict). Frozen weights are rebuilt identically at both ends from the same config and
never leave a site.
"""

from collections import OrderedDict

import torch
from flwr.app import ArrayRecord

from medvlm.errors import UserError

NORM_STATISTICS = ("running_mean", "running_var")


def travelling_tensors(model) -> "OrderedDict[str, torch.Tensor]":
    """{name: tensor} of what a round moves, in the model's own order (the same at every end)."""
    tensors = OrderedDict((name, p) for name, p in model.named_parameters() if p.requires_grad)
    for module_name, module in model.named_modules():
        trained = any(p.requires_grad for p in module.parameters(recurse=False))
        for stat in NORM_STATISTICS:
            buffer = getattr(module, stat, None)
            if trained and isinstance(buffer, torch.Tensor):
                tensors[f"{module_name}.{stat}"] = buffer
    return tensors


def to_arrays(model) -> ArrayRecord:
    """The travelling tensors as an ArrayRecord (float32 numpy copies, on the CPU)."""
    return ArrayRecord(OrderedDict((name, t.detach().float().cpu()) for name, t in travelling_tensors(model).items()))


def load_arrays(model, arrays: ArrayRecord) -> None:
    """Copy `arrays` into the model's travelling tensors; any name or shape that differs is an
    error naming it (the two ends were built from different configs)."""
    own = travelling_tensors(model)
    received = arrays.to_torch_state_dict()
    missing, unexpected = sorted(set(own) - set(received)), sorted(set(received) - set(own))
    if missing or unexpected:
        raise UserError(f"the global weights do not fit this site's model: missing {missing[:5]}, unexpected "
                        f"{unexpected[:5]}; every site must run the server's model config")
    with torch.no_grad():
        for name, tensor in own.items():
            value = received[name]
            if value.shape != tensor.shape:
                raise UserError(f"the global weights do not fit this site's model: {name} has shape "
                                f"{tuple(value.shape)}, the site's model {tuple(tensor.shape)}")
            tensor.copy_(value.to(tensor.dtype))


def payload_bytes(arrays: ArrayRecord) -> int:
    """Bytes of array data in one direction of one site's round."""
    return int(sum(array.numpy().nbytes for array in arrays.values()))


def valid_statistics(arrays: ArrayRecord, floor: float = 1e-5) -> ArrayRecord:
    """`arrays` with every running variance at least `floor`: differential privacy's Gaussian
    noise can push an averaged variance below zero, which would make every activation NaN
    (clamping is post-processing: it spends no privacy)."""
    tensors = arrays.to_torch_state_dict()
    for name, value in tensors.items():
        if name.endswith(".running_var"):
            tensors[name] = value.clamp_min(floor)
    return ArrayRecord(tensors)


def names_in_order(cfg, processor) -> list[str]:
    """The travelling tensors' names in the order every end lists them (a legacy, unnamed
    parameter list, as SecAgg+ sends, is read in this order)."""
    from .local_training import site_model

    return list(travelling_tensors(site_model(cfg, processor, None)))
