r"""The prompt of the shipped digit models: a sequence of 8 conditioning tokens per image.

A "prompt" for class :math:`c \in \{0..9\}` is the sequence ``[ctx_1, ..., ctx_7, class_c]`` (7 learned
context tokens shared by all prompts, then the class token) plus learned positions, passed through one small
pre-norm transformer layer (the "text encoder"), so every one of the 8 tokens carries the class and the
denoiser's cross-attention has 8 distinct keys to choose among, like a text prompt. Class index 10 is the
null prompt used for classifier-free guidance (trained by 10% condition dropout).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .data import NUM_CLASSES

__all__ = ["PromptEncoder", "NULL_CLASS", "PROMPT_TOKENS"]

NULL_CLASS = NUM_CLASSES
PROMPT_TOKENS = 8


class PromptEncoder(nn.Module):
    """labels (B,) int64 in [0, 10] (10 = null) -> tokens (B, 8, dim)."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.class_embed = nn.Embedding(NUM_CLASSES + 1, dim)
        self.context = nn.Parameter(torch.randn(PROMPT_TOKENS - 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(PROMPT_TOKENS, dim) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, labels: Tensor) -> Tensor:
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"labels must be an int64 tensor of shape (B,), got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > NULL_CLASS):
            raise ValueError(f"labels must lie in [0, {NULL_CLASS}] ({NULL_CLASS} = null prompt)")
        b = labels.shape[0]
        tokens = torch.cat([self.context.expand(b, -1, -1), self.class_embed(labels)[:, None]], dim=1) + self.pos
        return self.norm(self.encoder(tokens))
