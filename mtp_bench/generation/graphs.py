"""Batch-1 decoding replayed from one CUDA graph: the decoding step as a single launch.

A small model decoding one sequence on a GPU is bound by kernel launches and Python, not by the
GPU (issue 20: 5 ms a token for a 3M-parameter model on an H200, where the arithmetic takes
microseconds). `StaticDecoder` runs the reference model's `decode_step_static` (every shape fixed
whatever the position: the key/value write is an index_copy_ at a position held in a tensor, and
attention spans the whole preallocated cache behind a mask) and, on CUDA, captures it once in a
`torch.cuda.CUDAGraph`; each step then copies the token and position in and replays the graph.

Where it applies (`applies`): a native reference model (not anticausal heads, whose head 0 needs
the whole chain) on CUDA, batch 1 (no padding), after the engine's normal prefill. Elsewhere the
engine decodes as before. On a CPU the same static step runs eagerly (`use_graph=False`), which is
how the tests check that it generates what the normal path generates.

Not covered yet: the speculative verify step (a block of k+1 queries after a variable number of
accepted drafts); it still runs eagerly.
"""

from __future__ import annotations

import torch

ENABLED = True  # the engine uses CUDA graphs for batch-1 decoding where `applies`; False turns them off


def applies(model, batch_size: int) -> bool:
    """Whether the engine should decode this batch through a StaticDecoder on CUDA."""
    module = getattr(model, "module", None)
    return (ENABLED and batch_size == 1 and hasattr(module, "decode_step_static")
            and getattr(getattr(module, "config", None), "head_type", "") != "anticausal"
            and torch.device(model.device).type == "cuda")


class StaticDecoder:
    """One-token decoding steps of `module` (a reference Transformer) over `cache` (batch 1, no padding),
    from a CUDA graph when `use_graph` (default: on CUDA), else eagerly (the same operations)."""

    def __init__(self, module, cache, use_graph: bool | None = None) -> None:
        if cache.batch_size != 1 or cache.padded:
            raise ValueError("StaticDecoder decodes one unpadded row")
        self.module, self.cache = module, cache
        dev = cache.k.device
        self.token = torch.zeros(1, 1, dtype=torch.long, device=dev)  # static inputs: the graph reads these
        self.pos = torch.full((1,), cache.max_len - 1, dtype=torch.long, device=dev)
        self.graph = None
        self.logits: torch.Tensor | None = None  # (1, 1, V) the graph's output buffer
        if use_graph if use_graph is not None else dev.type == "cuda":
            self._capture()

    def _step(self) -> torch.Tensor:
        return self.module.decode_step_static(self.token, self.pos, self.cache)

    def _capture(self) -> None:
        # warm-up and capture write keys/values at the last position (pos = max_len - 1): decoding
        # writes it before it ever reads it, so nothing of the prompt is overwritten
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    def __call__(self, token: int) -> torch.Tensor:
        """Feed `token` at the cache's next position; head 0's logits (1, V) for the position after."""
        pos = self.cache.length
        if pos >= self.cache.max_len:
            raise ValueError(f"cache overflow: position {pos} of a cache of {self.cache.max_len}")
        self.token.fill_(int(token))
        self.pos.fill_(pos)
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            logits = self._step()
        self.cache.real[:, pos] = True
        self.cache.length = pos + 1
        return logits[:, -1]
