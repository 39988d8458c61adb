"""KV caches for `generate`, spanning every decoder layer (the text tower's, then the fusion
blocks'), and the switch that lets `generate` compile its decode step on any device."""

import torch
from transformers import CompileConfig
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer


def gather_rows(filled: torch.Tensor, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A new buffer shaped like `like` whose first positions hold `filled[rows]` (one copy)."""
    buffer = torch.empty_like(like)  # (B, heads, capacity, head_dim)
    torch.index_select(filled, 0, rows, out=buffer[:, :, : filled.shape[2]])
    return buffer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values live in buffers allocated up front (`capacity`
    positions; doubled if a sequence outgrows them): each step writes only its new positions
    instead of concatenating the whole cache again. `keys`/`values` are views of the buffers, so
    every inherited method that reads them (lengths, masks) works unchanged; one that replaces
    them (crop, batch selection) makes the next update copy them into fresh buffers."""

    def __init__(self, capacity: int = 0):
        super().__init__()
        self.capacity = capacity
        self.key_buffer = self.value_buffer = None  # (B, heads, capacity, head_dim) each

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past = self.keys.shape[-2] if self.keys.ndim == 4 else 0
        end = past + key_states.shape[-2]
        in_buffer = self.key_buffer is not None and self.keys.data_ptr() == self.key_buffer.data_ptr()
        if not in_buffer or end > self.key_buffer.shape[-2]:
            self._reallocate(key_states, past, max(end, self.capacity, 2 * past))
        self.key_buffer.narrow(2, past, end - past).copy_(key_states)
        self.value_buffer.narrow(2, past, end - past).copy_(value_states)
        self.keys = self.key_buffer.narrow(2, 0, end)  # (B, heads, end, head_dim), a view
        self.values = self.value_buffer.narrow(2, 0, end)
        return self.keys, self.values

    def _reallocate(self, like: torch.Tensor, past: int, capacity: int) -> None:
        B, H, _, hd = like.shape
        self.key_buffer, self.value_buffer = like.new_empty(B, H, capacity, hd), like.new_empty(B, H, capacity, hd)
        if past:
            self.key_buffer[:, :, :past], self.value_buffer[:, :, :past] = self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: gather the filled positions of the chosen rows straight into new buffers."""
        past = self.get_seq_length()
        if past:
            beam_idx = beam_idx.to(self.key_buffer.device)
            self.key_buffer = gather_rows(self.keys, beam_idx, like=self.key_buffer)
            self.value_buffer = gather_rows(self.values, beam_idx, like=self.value_buffer)
            self.keys, self.values = self.key_buffer[:, :, :past], self.value_buffer[:, :, :past]

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        super().reset()


class PreallocatedCache(Cache):
    """KV cache of every decoder layer (text tower, then fusion blocks) as `PreallocatedLayer`s;
    `capacity` is the longest sequence expected (prompt + new tokens)."""

    def __init__(self, capacity: int = 0):
        super().__init__(layer_class_to_replicate=lambda: PreallocatedLayer(capacity))


class StaticDecoderCache(Cache):
    """KV cache of every decoder layer as transformers' `StaticLayer`: buffers of `capacity`
    positions whose shapes never change, so `generate` can run a compiled decode step (it compiles
    by itself on GPU). Attention then reads the whole buffer and the mask hides unwritten slots."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[StaticLayer(capacity) for _ in range(num_layers)])


def compile_on_any_device(**compile_kwargs) -> CompileConfig:
    """A `CompileConfig` that `generate` honours on every device, CPU included; with a static
    cache (`cache_implementation="static"`) the decode step is then compiled. By default generate
    compiles on GPUs and other accelerators only. The first call pays the compilation."""
    config = CompileConfig(**compile_kwargs)
    config._compile_all_devices = True  # the switch transformers reads; it has no public setter
    return config
