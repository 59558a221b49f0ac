"""GradCache (Gao et al., 2021): the contrastive loss over a whole batch, with the encoder run in chunks.

    1. every chunk of queries and of passages is encoded without a graph, and the random state it drew its dropout
       masks from is kept;
    2. the loss over all the embeddings (in-batch negatives across the whole batch, gathered across processes) is
       differentiated down to the embeddings alone;
    3. every chunk is encoded again, with a graph and the same random state (the same dropout masks), and its
       embeddings' gradients are pushed through it into the weights.

Peak activation memory is one chunk's whatever the batch, for a second forward pass; the gradients are those of
the plain loss. Gradient accumulation enlarges the batch the optimizer sees, not the negatives each query is
contrasted with; GradCache enlarges both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Encode = Callable[[str, dict[str, torch.Tensor]], torch.Tensor]  # (kind, token tensors) -> embeddings


class RandomState:
    """The CPU generator's state, and the current GPU's when there is one."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


class CachedEncoding:
    """One batch's embeddings computed chunk by chunk (`embed`), then the gradient of a loss over them pushed
    through the encoder chunk by chunk (`backward`)."""

    def __init__(self, encode: Encode, chunk_size: int):
        self.encode, self.chunk_size = encode, chunk_size
        self.chunks: list[tuple[str, dict[str, torch.Tensor], RandomState, torch.Tensor]] = []
        device = "cuda" if torch.cuda.is_available() and torch.cuda.is_initialized() else "cpu"
        # the autocast of the training step, which the second pass (outside it, in backward) must repeat
        self.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))

    def embed(self, kind: str, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings of every row of `tokens`, as a leaf that collects the loss's gradient."""
        rows = next(iter(tokens.values())).shape[0]
        parts = []
        for start in range(0, rows, self.chunk_size):
            chunk = {name: t[start:start + self.chunk_size] for name, t in tokens.items()}
            state = RandomState()
            with torch.no_grad():
                embeddings = self.encode(kind, chunk)
            leaf = embeddings.detach().requires_grad_()
            self.chunks.append((kind, chunk, state, leaf))
            parts.append(leaf)
        return torch.cat(parts)

    def backward(self, loss: torch.Tensor) -> None:
        """The loss's gradient down to the embeddings, then through the encoder, one chunk at a time."""
        loss.backward()
        after = RandomState()
        device, enabled, dtype = self.autocast
        for kind, chunk, state, leaf in self.chunks:
            state.restore()  # the dropout masks of the first pass
            with torch.autocast(device, dtype=dtype, enabled=enabled):
                embeddings = self.encode(kind, chunk)
            embeddings.backward(leaf.grad)
        after.restore()
        self.chunks = []
