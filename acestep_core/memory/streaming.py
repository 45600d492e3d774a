"""Weight streaming for a stack of equal layers (the DiT's ``decoder.layers``, the LM's ``layers``).

The first ``resident`` layers live on the compute device. The others stay in CPU memory (pinned on CUDA, so
copies run asynchronously) and are copied into one of ``slots`` device buffers just before they run: while
layer k computes, layer k+1 is copied on a side CUDA stream. A layer's parameters point at its buffer only
while it runs and at its CPU copy otherwise, so anything that reads or patches the weights between runs (LoRA
patching, ``state_dict``) sees the CPU tensors; a buffer is re-copied when the tensor behind it changed.

Streaming hooks in where the models iterate their layers (``for layer in self.layers``, the DiT's cross-attention
K/V included): ``StreamedLayers`` is a ``ModuleList`` with the same children whose iteration loads each streamed
layer for the loop body and puts it back after. On the CPU the same schedule runs with plain copies and no
streams, so tests exercise the code path the GPU runs; results are bit-identical to the fully loaded stack
(the same weights, the same kernels).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..constants import STREAM_SLOTS


def _tensors(layer: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """(owner module, attribute, is_parameter) of every parameter and buffer of ``layer``, in a fixed order."""
    out = []
    for module in layer.modules():
        out += [(module, name, True) for name, _ in module.named_parameters(recurse=False)]
        out += [(module, name, False) for name, b in module.named_buffers(recurse=False) if b is not None]
    return out


def _get(owner: nn.Module, name: str, is_param: bool) -> torch.Tensor:
    tensor = getattr(owner, name)
    return tensor.data if is_param else tensor


def _set(owner: nn.Module, name: str, is_param: bool, value: torch.Tensor) -> None:
    if is_param:
        getattr(owner, name).data = value
    else:
        owner._buffers[name] = value


class LayerStreamer:
    """Copies ``layers`` (equal in parameter names, shapes and dtypes) one at a time into ``slots`` buffers on
    ``device()``, ahead of use. ``acquire(k)`` / ``release(k)`` bracket the use of the k-th layer; ``begin()``
    starts a pass over the layers (its first copies overlap whatever runs before)."""

    def __init__(self, layers: list[nn.Module], device: Callable[[], torch.device], slots: int = STREAM_SLOTS):
        self.layers = layers
        self.device = device
        self.slots = max(1, slots)
        self.entries = [_tensors(layer) for layer in layers]
        signature = [[(n, tuple(_get(o, n, p).shape), _get(o, n, p).dtype) for o, n, p in e] for e in self.entries]
        if any(s != signature[0] for s in signature[1:]):
            raise ValueError("streamed layers must be equal in parameter names, shapes and dtypes")
        self._buffers: list[list[torch.Tensor]] = []
        self._buffer_device: torch.device | None = None
        self._holds: list[int | None] = []  # which layer each buffer holds (None: nothing valid)
        self._sources: list[list[int]] = []  # data pointers of the CPU tensors each buffer was copied from
        self._ready: list = []  # CUDA events: the copy into the buffer is done
        self._free: list = []  # CUDA events: the layer that used the buffer is done
        self._stream = None
        self.copies = 0  # layer copies made (for tests and the summary)

    # ------------------------------------------------------------------------------------------------ buffers

    def _allocate(self, device: torch.device) -> None:
        if self._buffer_device == device and self._buffers:
            return
        template = [_get(o, n, p) for o, n, p in self.entries[0]] if self.entries else []
        self._buffers = [[torch.empty_like(t, device=device) for t in template] for _ in range(self.slots)]
        self._buffer_device = device
        self._holds = [None] * self.slots
        self._sources = [[] for _ in range(self.slots)]
        self._ready = [None] * self.slots
        self._free = [None] * self.slots
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def free_buffers(self) -> None:
        """Drop the device buffers (they are allocated again on the next pass)."""
        if self._stream is not None:
            self._stream.synchronize()
        self._buffers, self._buffer_device = [], None

    def invalidate(self) -> None:
        """Forget what the buffers hold: the next pass copies every layer again (a new request)."""
        self._holds = [None] * len(self._holds)

    def pin(self) -> None:
        """Move the CPU copies into pinned memory (CUDA only), so that copies to the device run asynchronously."""
        if not torch.cuda.is_available():
            return
        for entry in self.entries:
            for owner, name, is_param in entry:
                t = _get(owner, name, is_param)
                if t.device.type == "cpu" and not t.is_pinned():
                    _set(owner, name, is_param, t.pin_memory())

    # ------------------------------------------------------------------------------------------------ schedule

    def _slot(self, k: int) -> int:
        return k % self.slots

    def _current_sources(self, k: int) -> list[int]:
        return [_get(o, n, p).data_ptr() for o, n, p in self.entries[k]]

    def _copy(self, k: int) -> None:
        """Start copying layer k into its buffer (on the side stream on CUDA, after the buffer's last user)."""
        s = self._slot(k)
        homes = [_get(o, n, p) for o, n, p in self.entries[k]]
        if self._stream is None:
            for buffer, home in zip(self._buffers[s], homes):
                buffer.copy_(home)
        else:
            with torch.cuda.stream(self._stream):
                if self._free[s] is not None:
                    self._stream.wait_event(self._free[s])
                for buffer, home in zip(self._buffers[s], homes):
                    buffer.copy_(home, non_blocking=True)
                self._ready[s] = self._stream.record_event()
        self._holds[s], self._sources[s] = k, [h.data_ptr() for h in homes]
        self.copies += 1

    def begin(self) -> None:
        """Start a pass: allocate the buffers for the current device and copy the first layers ahead."""
        self._allocate(self.device())
        for k in range(min(self.slots - 1, len(self.layers))):
            self._prefetch(k)

    def _prefetch(self, k: int) -> None:
        s = self._slot(k)
        if self._holds[s] != k or self._sources[s] != self._current_sources(k):
            self._copy(k)

    def acquire(self, k: int) -> None:
        """Point layer k's parameters at its device buffer (copying it now if it was not copied ahead) and start
        copying the next layer."""
        if not self._buffers:
            self._allocate(self.device())
        self._prefetch(k)
        s = self._slot(k)
        if self._stream is not None and self._ready[s] is not None:
            torch.cuda.current_stream(self._buffer_device).wait_event(self._ready[s])
        for (owner, name, is_param), buffer in zip(self.entries[k], self._buffers[s]):
            _set(owner, name, is_param, buffer)
        if k + 1 < len(self.layers) and self.slots > 1:
            self._prefetch(k + 1)

    def release(self, k: int, homes: list[torch.Tensor]) -> None:
        """Point layer k's parameters back at their CPU tensors; its buffer may be overwritten once the work queued
        so far is done."""
        for (owner, name, is_param), home in zip(self.entries[k], homes):
            _set(owner, name, is_param, home)
        if self._stream is not None:
            self._free[self._slot(k)] = torch.cuda.current_stream(self._buffer_device).record_event()

    @contextmanager
    def loaded(self, k: int):
        homes = [_get(o, n, p) for o, n, p in self.entries[k]]
        self.acquire(k)
        try:
            yield self.layers[k]
        finally:
            self.release(k, homes)


class StreamedLayers(nn.ModuleList):
    """``layers`` with the first ``resident`` on the device and the rest streamed (see the module docstring).
    Registered under the same name as the ModuleList it replaces, it keeps every parameter name."""

    def __init__(self, layers: nn.ModuleList, resident: int, device: Callable[[], torch.device],
                 slots: int = STREAM_SLOTS):
        super().__init__(list(layers))
        self.resident = max(0, min(resident, len(layers)))
        self.streamer = LayerStreamer(list(layers)[self.resident:], device, slots)

    @property
    def streamed(self) -> int:
        return len(self) - self.resident

    def __iter__(self) -> Iterator[nn.Module]:
        layers = list(self._modules.values())
        yield from layers[: self.resident]
        if self.resident < len(layers):
            self.streamer.begin()
        for k, layer in enumerate(layers[self.resident:]):
            with self.streamer.loaded(k):
                yield layer

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # e.g. transformers' ``self.layers[: n]``: iterate through the streamer
            return _Slice(self, range(len(self))[idx])
        return super().__getitem__(idx)


class _Slice:
    def __init__(self, stack: StreamedLayers, indices: range):
        self.stack, self.indices = stack, indices

    def __iter__(self):
        wanted = set(self.indices)
        for i, layer in enumerate(self.stack):
            if i in wanted:
                yield layer

    def __len__(self) -> int:
        return len(self.indices)


def stream_layers(parent: nn.Module, attribute: str, resident: int, device: Callable[[], torch.device],
                  slots: int = STREAM_SLOTS, pin: bool = True) -> StreamedLayers:
    """Replace ``parent.<attribute>`` (a ModuleList) by a ``StreamedLayers`` keeping ``resident`` layers; the
    streamed layers are moved to the CPU (pinned when CUDA is there). Returns it."""
    layers = getattr(parent, attribute)
    if isinstance(layers, StreamedLayers):
        layers = unstream_layers(parent, attribute)
    stack = StreamedLayers(layers, resident, device, slots)
    for layer in list(layers)[stack.resident:]:
        layer.to("cpu")
    if pin:
        stack.streamer.pin()
    setattr(parent, attribute, stack)
    return stack


def unstream_layers(parent: nn.Module, attribute: str) -> nn.ModuleList:
    """Put a plain ModuleList of the same layers back (their weights where they are: the streamed ones on the CPU)."""
    stack = getattr(parent, attribute)
    if not isinstance(stack, StreamedLayers):
        return stack
    stack.streamer.free_buffers()
    plain = nn.ModuleList(list(stack._modules.values()))
    setattr(parent, attribute, plain)
    return plain
