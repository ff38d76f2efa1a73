r"""diffusers attention processors that hand each attention call to an attention function.

One class per stock processor. Each mirrors the stock ``__call__`` of diffusers 0.42.1 line for line (same
signature, q/k norms, RoPE, masks, output projections; ``_attention_backend``/``_parallel_config`` kept on
the Flux and Qwen ones) except for the attention kernel call, which becomes one :class:`AttentionCall`
handed to the installed function. ``call.dense()`` is the stock kernel call on the same tensors
(``F.scaled_dot_product_attention`` for the legacy processors, ``dispatch_attention_fn`` for Flux/Qwen), so
a function returning ``call.dense()`` leaves the model bit-identical.

=====================================  ==================================  ==================================
stock processor                        layout the kernel sees              text keys / image queries
=====================================  ==================================  ==================================
``AttnProcessor2_0`` (UNet, PixArt)    BHSD, SDPA, additive mask           cross: all keys / all queries
``JointAttnProcessor2_0`` (SD3, 3.5)   BHSD, SDPA, no mask, [image, text]  text after the image tokens
``FluxAttnProcessor`` (double/single)  BSHD, dispatch, RoPE, [text, image] the first ``Lt`` tokens
``QwenDoubleStreamAttnProcessor2_0``   BSHD, dispatch, bool mask, [txt,img] the first ``Lt`` tokens
=====================================  ==================================  ==================================

Flux single blocks concatenate text and image *before* attention; the text length is read from the
block's ``encoder_hidden_states`` by a forward pre-hook the installer registers (:mod:`.install`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections
from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0, apply_rotary_emb_qwen

from .core import ProcessorAdapter

__all__ = ["ADAPTERS", "adapter_for", "AdaptedAttnProcessor2_0", "AdaptedJointAttnProcessor2_0",
           "AdaptedFluxAttnProcessor", "AdaptedQwenDoubleStreamAttnProcessor2_0"]


# ------------------------------------------------------------------------------------------- legacy (BHSD)



class AdaptedAttnProcessor2_0(ProcessorAdapter, AttnProcessor2_0):
    """``AttnProcessor2_0`` (UNet ``attn1``/``attn2``, PixArt) with a pluggable attention function."""

    def __init__(self, fn, layer: str, state=None, original=None):
        AttnProcessor2_0.__init__(self)
        self._setup(fn, layer, state, original)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if len(args) > 0 or kwargs.get("scale", None) is not None:
            from diffusers.utils import deprecate

            deprecate("scale", "1.0.0", "The `scale` argument is deprecated and will be ignored.")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        cross = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        def dense():
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)

        lq, lk = query.shape[2], key.shape[2]
        hidden_states = self.run(query, key, value, attention_mask, None, dense, "cross" if cross else "self",
                             slice(0, lk) if cross else None, slice(0, lq), {})

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


class AdaptedJointAttnProcessor2_0(ProcessorAdapter, JointAttnProcessor2_0):
    """``JointAttnProcessor2_0`` (SD3 joint ``attn``; SD3.5 image-only ``attn2``), joint order [image, text]."""

    def __init__(self, fn, layer: str, state=None, original=None):
        JointAttnProcessor2_0.__init__(self)
        self._setup(fn, layer, state, original)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        n_img = query.shape[2]
        if encoder_hidden_states is not None:
            encoder_hidden_states_query_proj = attn.add_q_proj(encoder_hidden_states)
            encoder_hidden_states_key_proj = attn.add_k_proj(encoder_hidden_states)
            encoder_hidden_states_value_proj = attn.add_v_proj(encoder_hidden_states)
            encoder_hidden_states_query_proj = encoder_hidden_states_query_proj.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            encoder_hidden_states_key_proj = encoder_hidden_states_key_proj.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            encoder_hidden_states_value_proj = encoder_hidden_states_value_proj.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                encoder_hidden_states_query_proj = attn.norm_added_q(encoder_hidden_states_query_proj)
            if attn.norm_added_k is not None:
                encoder_hidden_states_key_proj = attn.norm_added_k(encoder_hidden_states_key_proj)
            query = torch.cat([query, encoder_hidden_states_query_proj], dim=2)
            key = torch.cat([key, encoder_hidden_states_key_proj], dim=2)
            value = torch.cat([value, encoder_hidden_states_value_proj], dim=2)

        def dense():
            return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)

        joint = encoder_hidden_states is not None
        n = key.shape[2]
        hidden_states = self.run(query, key, value, None, None, dense, "joint" if joint else "self",
                             slice(n_img, n) if joint else None, slice(0, n_img), {"n_text": n - n_img if joint else 0})

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1]:],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


# ------------------------------------------------------------------------------------------- dispatch (BSHD)


class AdaptedFluxAttnProcessor(ProcessorAdapter, FluxAttnProcessor):
    """``FluxAttnProcessor``: double blocks ([text, image] from two streams) and single blocks (text and
    image concatenated by the block; the text length comes from the block's pre-hook)."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, fn, layer: str, state=None, original=None):
        FluxAttnProcessor.__init__(self)
        self._setup(fn, layer, state, original)
        self.text_len = None  # set per call by the single block's pre-hook

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        def dense():
            out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                        backend=self._attention_backend, parallel_config=self._parallel_config)
            return out.transpose(1, 2)

        n = key.shape[1]
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            n_text = encoder_hidden_states.shape[1]
        else:
            n_text = self.text_len
        mask = None if attention_mask is None else (attention_mask[:, None, None, :] if attention_mask.dim() == 2 else attention_mask)
        if n_text is None:
            kind, text_keys, image_queries = "self", None, slice(0, n)
        else:
            kind, text_keys, image_queries = "joint", slice(0, n_text), slice(n_text, n)
        out = self.run(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), mask, None, dense,
                   kind, text_keys, image_queries, {"n_text": n_text or 0})
        hidden_states = out.transpose(1, 2)

        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


class AdaptedQwenDoubleStreamAttnProcessor2_0(ProcessorAdapter, QwenDoubleStreamAttnProcessor2_0):
    """``QwenDoubleStreamAttnProcessor2_0``: [text, image], boolean mask from ``encoder_hidden_states_mask``,
    complex RoPE per stream."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, fn, layer: str, state=None, original=None):
        QwenDoubleStreamAttnProcessor2_0.__init__(self)
        self._setup(fn, layer, state, original)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is None:
            raise ValueError("QwenDoubleStreamAttnProcessor2_0 requires encoder_hidden_states (text stream)")
        if attention_mask is not None:
            raise ValueError(
                "QwenDoubleStreamAttnProcessor2_0 does not accept an external attention_mask. "
                "Pass encoder_hidden_states_mask to let the processor build the joint mask."
            )
        if encoder_hidden_states_mask is not None:
            seq_img = hidden_states.shape[1]
            image_mask = torch.ones((hidden_states.shape[0], seq_img), dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)
            attention_mask = attention_mask[:, None, None, :]
        seq_txt = encoder_hidden_states.shape[1]
        img_query = attn.to_q(hidden_states)
        img_key = attn.to_k(hidden_states)
        img_value = attn.to_v(hidden_states)
        txt_query = attn.add_q_proj(encoder_hidden_states)
        txt_key = attn.add_k_proj(encoder_hidden_states)
        txt_value = attn.add_v_proj(encoder_hidden_states)
        head_dim = attn.inner_dim // attn.heads
        img_query = img_query.unflatten(-1, (-1, head_dim))
        img_key = img_key.unflatten(-1, (-1, head_dim))
        img_value = img_value.unflatten(-1, (-1, head_dim))
        txt_query = txt_query.unflatten(-1, (-1, head_dim))
        txt_key = txt_key.unflatten(-1, (-1, head_dim))
        txt_value = txt_value.unflatten(-1, (-1, head_dim))
        if attn.norm_q is not None:
            img_query = attn.norm_q(img_query)
        if attn.norm_k is not None:
            img_key = attn.norm_k(img_key)
        if attn.norm_added_q is not None:
            txt_query = attn.norm_added_q(txt_query)
        if attn.norm_added_k is not None:
            txt_key = attn.norm_added_k(txt_key)
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            img_query = apply_rotary_emb_qwen(img_query, img_freqs, use_real=False)
            img_key = apply_rotary_emb_qwen(img_key, img_freqs, use_real=False)
            txt_query = apply_rotary_emb_qwen(txt_query, txt_freqs, use_real=False)
            txt_key = apply_rotary_emb_qwen(txt_key, txt_freqs, use_real=False)
        joint_query = torch.cat([txt_query, img_query], dim=1)
        joint_key = torch.cat([txt_key, img_key], dim=1)
        joint_value = torch.cat([txt_value, img_value], dim=1)

        def dense():
            out = dispatch_attention_fn(joint_query, joint_key, joint_value, attn_mask=attention_mask, dropout_p=0.0,
                                        is_causal=False, backend=self._attention_backend, parallel_config=self._parallel_config)
            return out.transpose(1, 2)

        # the kernel accepts an integer 0/1 mask; the attention function gets it as bool (True = attend)
        mask = attention_mask
        if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
            mask = mask != 0
        n = joint_key.shape[1]
        out = self.run(joint_query.transpose(1, 2), joint_key.transpose(1, 2), joint_value.transpose(1, 2), mask, None,
                   dense, "joint", slice(0, seq_txt), slice(seq_txt, n),
                   {"n_text": seq_txt, "image_rotary_emb": image_rotary_emb, "encoder_hidden_states_mask": encoder_hidden_states_mask})
        joint_hidden_states = out.transpose(1, 2)

        joint_hidden_states = joint_hidden_states.flatten(2, 3)
        joint_hidden_states = joint_hidden_states.to(joint_query.dtype)
        txt_attn_output = joint_hidden_states[:, :seq_txt, :]
        img_attn_output = joint_hidden_states[:, seq_txt:, :]
        img_attn_output = attn.to_out[0](img_attn_output.contiguous())
        if len(attn.to_out) > 1:
            img_attn_output = attn.to_out[1](img_attn_output)
        txt_attn_output = attn.to_add_out(txt_attn_output.contiguous())
        return img_attn_output, txt_attn_output


#: stock processor type -> adapter type (exact types: a subclass of a stock processor may change its logic)
ADAPTERS = {
    AttnProcessor2_0: AdaptedAttnProcessor2_0,
    JointAttnProcessor2_0: AdaptedJointAttnProcessor2_0,
    FluxAttnProcessor: AdaptedFluxAttnProcessor,
    QwenDoubleStreamAttnProcessor2_0: AdaptedQwenDoubleStreamAttnProcessor2_0,
}

def adapter_for(processor):
    """The adapter class replacing ``processor``, or None when its type is not supported.

    Besides the diffusers processors above, a processor class may name its own adapter through a
    ``hopfield_gag_adapter()`` static method (the shipped models of :mod:`hopfield_gag.models` do)."""
    own = getattr(type(processor), "hopfield_gag_adapter", None)
    return own() if callable(own) else ADAPTERS.get(type(processor))
