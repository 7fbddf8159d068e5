"""A small attention encoder–decoder (Transformer, ``torch.nn`` layers) for seq2seq distillation.

``Seq2SeqTransformer(source_vocab, target_vocab, ...)`` is called as the ``tokens`` task calls a seq2seq model,
``model(input_ids=source, decoder_input_ids=<s> + target)``, and returns the decoder's logits ``(B, L, V)``
(position ``t`` predicts target token ``t``; task ``get_task("tokens", shift=False, pad_token_id=0)``). Id 0
pads both sides. :meth:`~Seq2SeqTransformer.encode` and :meth:`~Seq2SeqTransformer.decode` are the two halves
the decoders of :mod:`distill.seq2seq` (greedy, beam search) call. Sizes: :data:`TEACHER` and :data:`STUDENT`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.zoo.models import register_model

#: the grapheme-to-phoneme teacher and a student about 8x smaller (parameters)
TEACHER = {"d_model": 192, "heads": 4, "encoder_layers": 3, "decoder_layers": 3}
STUDENT = {"d_model": 96, "heads": 4, "encoder_layers": 2, "decoder_layers": 1}


class Seq2SeqTransformer(nn.Module):
    """Pre-norm Transformer encoder–decoder with learned positions and a causal decoder; ``ff`` defaults to
    ``4 * d_model``."""

    def __init__(self, source_vocab: int, target_vocab: int, d_model: int = 128, heads: int = 4,
                 encoder_layers: int = 2, decoder_layers: int = 2, ff: int | None = None, dropout: float = 0.1,
                 max_len: int = 64, pad_id: int = 0):
        super().__init__()
        if d_model % heads:
            raise DistillError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        ff = ff or 4 * d_model
        self.pad_id, self.max_len = pad_id, max_len
        self.source_embed = nn.Embedding(source_vocab, d_model, padding_idx=pad_id)
        self.target_embed = nn.Embedding(target_vocab, d_model, padding_idx=pad_id)
        self.source_pos = nn.Embedding(max_len, d_model)
        self.target_pos = nn.Embedding(max_len, d_model)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True),
            encoder_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True),
            decoder_layers, norm=nn.LayerNorm(d_model))
        self.head = nn.Linear(d_model, target_vocab)

    def _embed(self, ids, embed, pos):
        if ids.shape[1] > self.max_len:
            raise DistillError(f"sequence of {ids.shape[1]} tokens is longer than the model's max_len {self.max_len}")
        return embed(ids) + pos(torch.arange(ids.shape[1], device=ids.device))[None]

    def encode(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(memory (B, S, D), padding (B, S) True at padding)`` of source ids ``(B, S)``."""
        padding = input_ids == self.pad_id
        memory = self.encoder(self._embed(input_ids, self.source_embed, self.source_pos), src_key_padding_mask=padding)
        return memory, padding

    def decode(self, memory: torch.Tensor, padding: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, V)`` of each next target token given the prefix ``decoder_input_ids`` ``(B, L)``."""
        length = decoder_input_ids.shape[1]
        causal = torch.triu(torch.full((length, length), float("-inf"), device=memory.device), 1)
        hidden = self.decoder(self._embed(decoder_input_ids, self.target_embed, self.target_pos), memory,
                              tgt_mask=causal, memory_key_padding_mask=padding)
        return self.head(hidden)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor, attention_mask=None,
                decoder_attention_mask=None) -> torch.Tensor:
        """Teacher-forced logits ``(B, L, V)``; padding is read from id 0, so the attention masks are not needed."""
        return self.decode(*self.encode(input_ids), decoder_input_ids)

    # Incremental decoding: the same layers computed one target position at a time, each attention's keys and
    # values kept (the source's once, the prefix's growing), so a step costs one position, not the whole prefix.

    def start_decoding(self, memory: torch.Tensor, padding: torch.Tensor) -> DecoderCache:
        """An empty prefix over ``memory`` ``(N, S, D)`` for :meth:`decode_step` (the source's keys and values
        computed here, once)."""
        source = [(_heads(layer.multihead_attn, memory, 1), _heads(layer.multihead_attn, memory, 2))
                  for layer in self.decoder.layers]
        return DecoderCache(source, ~padding[:, None, None, :])

    def decode_step(self, cache: DecoderCache, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` ``(N,)`` to the prefix in ``cache``; the logits ``(N, V)`` of the token after it —
        equal to the last position of :meth:`decode` on the whole prefix (the layers in eval mode)."""
        position = cache.length
        if position >= self.max_len:
            raise DistillError(f"sequence of {position + 1} tokens is longer than the model's max_len {self.max_len}")
        x = (self.target_embed(tokens) + self.target_pos.weight[position])[:, None]
        for i, layer in enumerate(self.decoder.layers):  # nn.TransformerDecoderLayer, norm_first
            h = layer.norm1(x)
            cache.append(i, _heads(layer.self_attn, h, 1), _heads(layer.self_attn, h, 2))
            x = x + _attend(layer.self_attn, _heads(layer.self_attn, h, 0), *cache.prefix[i])
            x = x + _attend(layer.multihead_attn, _heads(layer.multihead_attn, layer.norm2(x), 0), *cache.source[i],
                            cache.source_mask)
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        cache.length += 1
        return self.head(self.decoder.norm(x))[:, 0]


class DecoderCache:
    """A batch of decoding prefixes for :meth:`Seq2SeqTransformer.decode_step`: per decoder layer the source's
    and the prefix's attention keys and values ``(N, heads, length, head_dim)``. :meth:`select` keeps (and
    reorders, repeats) rows, as beam search does."""

    def __init__(self, source: list, source_mask: torch.Tensor):
        self.source, self.source_mask = source, source_mask
        self.prefix: list = [None] * len(source)
        self.length = 0

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        if self.prefix[layer] is None:
            self.prefix[layer] = (key, value)
        else:
            k, v = self.prefix[layer]
            self.prefix[layer] = (torch.cat([k, key], 2), torch.cat([v, value], 2))

    def select(self, rows: torch.Tensor, source: bool = True) -> None:
        """Keep ``rows`` (``source=False``: the source's part stays as it is, when each row keeps its source)."""
        if source:
            self.source = [(k[rows], v[rows]) for k, v in self.source]
            self.source_mask = self.source_mask[rows]
        self.prefix = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.prefix]


def _heads(attention: nn.MultiheadAttention, x: torch.Tensor, part: int) -> torch.Tensor:
    """The query (``part`` 0), key (1) or value (2) projection of ``x`` ``(N, L, D)`` by ``attention``'s
    weights, split into heads: ``(N, heads, L, head_dim)``."""
    d = attention.embed_dim
    y = F.linear(x, attention.in_proj_weight[part * d:(part + 1) * d], attention.in_proj_bias[part * d:(part + 1) * d])
    return y.view(len(x), x.shape[1], attention.num_heads, d // attention.num_heads).transpose(1, 2)


def _attend(attention: nn.MultiheadAttention, q, k, v, mask=None) -> torch.Tensor:
    """``attention``'s output for projected ``q``, ``k``, ``v`` (``mask``: True where a key may be attended)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attention.out_proj(out.transpose(1, 2).reshape(len(q), q.shape[2], -1))


@register_model("seq2seq", "Transformer encoder-decoder for grapheme-to-phoneme (or any seq2seq data); options: "
                "source_vocab, d_model, heads, encoder_layers, decoder_layers, dropout, max_len")
def seq2seq(in_shape, num_classes, source_vocab: int = 29, **options):
    """A fresh :class:`Seq2SeqTransformer` whose target vocabulary is the data's ``num_classes`` (``source_vocab``
    29: G2P's letters and three specials; ``in_shape`` is not used)."""
    return Seq2SeqTransformer(source_vocab, num_classes, **options)


class ParallelCTC(nn.Module):
    """A non-autoregressive student: a Transformer encoder over the source, each position repeated ``upsample``
    times, predicting every output symbol at once with a CTC output layer (blank = id 0, the padding id; a
    target may be up to ``upsample`` times the source's length). ``forward(input_ids)`` returns frame logits
    ``(B, S * upsample, V)``; :func:`distill.seq2seq.ctc_greedy` decodes them."""

    def __init__(self, source_vocab: int, target_vocab: int, d_model: int = 96, heads: int = 4, layers: int = 3,
                 ff: int | None = None, dropout: float = 0.1, upsample: int = 2, max_len: int = 64, pad_id: int = 0):
        super().__init__()
        self.pad_id, self.upsample, self.max_len = pad_id, upsample, max_len
        self.embed = nn.Embedding(source_vocab, d_model, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len * upsample, d_model)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, heads, ff or 4 * d_model, dropout, batch_first=True, norm_first=True),
            layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, target_vocab)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids=None, attention_mask=None, **_) -> torch.Tensor:
        if input_ids.shape[1] > self.max_len:
            raise DistillError(f"sequence of {input_ids.shape[1]} tokens is longer than the model's max_len "
                               f"{self.max_len}")
        ids = input_ids.repeat_interleave(self.upsample, 1)
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))[None]
        return self.head(self.encoder(x, src_key_padding_mask=ids == self.pad_id))
