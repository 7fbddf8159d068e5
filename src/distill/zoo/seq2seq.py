"""A small attention encoder–decoder (Transformer, ``torch.nn`` layers) for seq2seq distillation.

``Seq2SeqTransformer(source_vocab, target_vocab, ...)`` is called as the ``tokens`` task calls a seq2seq model,
``model(input_ids=source, decoder_input_ids=<s> + target)``, and returns the decoder's logits ``(B, L, V)``
(position ``t`` predicts target token ``t``; task ``get_task("tokens", shift=False, pad_token_id=0)``). Id 0
pads both sides. :meth:`~Seq2SeqTransformer.encode` and :meth:`~Seq2SeqTransformer.decode` are the two halves
the decoders of :mod:`distill.seq2seq` (greedy, beam search) call. Sizes: :data:`TEACHER` and :data:`STUDENT`.
"""
from __future__ import annotations

import torch
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
