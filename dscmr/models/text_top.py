"""The trainable top of a sentence encoder: its last transformer layers, mean pooling and L2 normalisation.

It takes token rows of the frozen bottom, flattened as the feature cache stores them (``(B, L * (H + 1))``: each
token's hidden values and its sentence number, see :mod:`dscmr.encoders.text_partial`), and returns sentence
vectors ``(B, H)``, the same vector ``SentenceTransformer.encode`` gives. A row holding several sentences gives the
mean of their (normalised) sentence vectors; tokens attend within their own sentence only. Dropout stays off when
the module trains (as the image top keeps its BatchNorm statistics), so a row's vector is the same in training and
evaluation; on Pascal Sentence (one seed) the layers' dropout gave mixed results (docs/end_to_end.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

EVAL_CHUNK = 256  # rows per forward pass without gradients (bounds the attention's memory)


class TextTop(nn.Module):
    """Last transformer layers + masked mean pooling (+ L2 normalisation) on flattened token rows.

    Args:
        layers: The transformer layers, each ``(hidden (B, L, H), additive mask (B, 1, L, L)) -> (B, L, H)``.
        hidden: Hidden width ``H``.
        normalize: L2-normalise each sentence vector (as the model's ``Normalize`` module does).
    """

    def __init__(self, layers: nn.ModuleList, hidden: int, *, normalize: bool = True) -> None:
        super().__init__()
        self.layers = layers
        self.hidden = hidden
        self.normalize = normalize
        self.num_features = hidden

    @classmethod
    def build(cls, text_model: str, top_layers: int, in_dim: int) -> TextTop:
        """The top of a sentence-transformers model (pretrained weights), for token rows of width ``in_dim``.

        Raises:
            ValueError: ``in_dim`` is not the model's hidden width + 1.
        """
        from dscmr.encoders.text_partial import partial_text_encoder

        enc = partial_text_encoder(text_model, top_layers)
        if in_dim != enc.dim:
            raise ValueError(f"text token width {in_dim} is not {enc.dim} (hidden + 1) for the text top")
        return cls(enc.top_layers_module(), enc.hidden, normalize=enc.normalize)

    def train(self, mode: bool = True) -> TextTop:
        """Train mode without dropout: the layers stay in eval mode (their only train-mode difference is dropout,
        hidden and attention); gradients flow as usual."""
        super().train(mode)
        self.layers.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token rows ``(B, L * (H + 1))`` -> sentence vectors ``(B, H)`` (row means over their sentences)."""
        if not torch.is_grad_enabled() and x.shape[0] > EVAL_CHUNK:
            return torch.cat([self._forward(x[i : i + EVAL_CHUNK]) for i in range(0, x.shape[0], EVAL_CHUNK)])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.float().view(x.shape[0], -1, self.hidden + 1)  # (B, L, H + 1)
        sent = tokens[..., -1].round().long()  # (B, L), sentence number, 0 = padding
        used = (sent > 0).any(0).nonzero()
        tokens, sent = tokens[:, : int(used.max()) + 1], sent[:, : int(used.max()) + 1]  # drop all-padding columns
        h = tokens[..., :-1]  # (B, L, H)
        n = h.shape[1]
        allowed = (sent[:, :, None] == sent[:, None, :]) & (sent[:, None, :] > 0)  # (B, L, L): same sentence
        allowed |= torch.eye(n, dtype=torch.bool, device=x.device)  # padding queries attend to themselves
        mask = torch.zeros(allowed.shape, dtype=h.dtype, device=x.device)
        mask = mask.masked_fill(~allowed, torch.finfo(h.dtype).min).unsqueeze(1)  # (B, 1, L, L)
        for layer in self.layers:
            h = layer(h, mask)
            h = h[0] if isinstance(h, tuple) else h
        n_sent = int(sent.max())
        member = (sent.unsqueeze(-1) == torch.arange(1, n_sent + 1, device=x.device)).to(h.dtype)  # (B, L, S)
        counts = member.sum(1)  # (B, S)
        emb = torch.einsum("bls,blh->bsh", member, h) / counts.clamp_min(1e-9).unsqueeze(-1)  # (B, S, H)
        if self.normalize:
            emb = F.normalize(emb, p=2, dim=-1)
        present = (counts > 0).to(h.dtype)  # (B, S)
        return (emb * present.unsqueeze(-1)).sum(1) / present.sum(1, keepdim=True).clamp_min(1.0)  # (B, H)
