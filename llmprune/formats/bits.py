"""Bit packing shared by the packed formats: 4-bit nibbles and k-bit little-endian streams in int32 words.

Why: every format stores integers narrower than a byte; one definition of the bit order keeps ``formats/`` and the
Triton kernels in ``kernels/`` in agreement (docs/FORMATS.md is the contract).

Nibbles: ``byte = c[2k] | c[2k+1] << 4`` (low nibble = even index), the order GPTQ/AWQ-style kernels read two codes
per byte in. Worked example: codes ``[1, 2, 3, 15]`` -> bytes ``[0x21, 0xF3]``.

Bit masks (held keep-masks, ``quantized_store``): entry ``j`` of the flattened mask is bit ``j % 8`` of byte
``j // 8``, the last byte zero-padded: numpy's ``packbits(..., bitorder="little")``, and the byte view of a k=1 stream.

k-bit streams (SpQR codes): code ``j`` occupies bits ``j*k .. j*k+k-1`` of the row's bit stream; bit ``b`` of the
stream is bit ``b % 32`` of word ``b // 32`` (little-endian, like compressed-tensors' ``pack_to_int32``). A code may
straddle two words. Worked example, k=3: codes ``[5, 1, 7, 2]`` -> stream bits 101|100|111|010 (LSB first) ->
word ``5 | 1<<3 | 7<<6 | 2<<9 = 0x5CD`` (1485).
"""
from __future__ import annotations

import torch
from torch import Tensor


def pack_nibbles(codes: Tensor) -> Tensor:
    """``[..., 2n]`` integers in 0..15 -> ``[..., n]`` uint8, low nibble = even index."""
    if codes.shape[-1] % 2:
        raise ValueError(f"nibble packing needs an even last dimension, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    if c.numel() and int(c.max()) > 15:
        raise ValueError("nibble packing needs codes in 0..15")
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: Tensor) -> Tensor:
    """``[..., n]`` uint8 -> ``[..., 2n]`` uint8 codes (inverse of ``pack_nibbles``)."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def pack_bitmask(mask: Tensor) -> Tensor:
    """Any-shaped bool mask -> ``[ceil(numel / 8)]`` uint8, flattened, eight entries a byte (low bit first).
    Eight entries a byte in uint8, not ``pack_bits(mask, 1)``: that one expands every entry to 64 bits on the way."""
    flat = mask.flatten().to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, -flat.numel() % 8)).reshape(-1, 8)
    return (flat << torch.arange(8, dtype=torch.uint8, device=flat.device)).sum(-1, dtype=torch.uint8)


def unpack_bitmask(packed: Tensor, numel: int) -> Tensor:
    """``[ceil(numel / 8)]`` uint8 -> the first ``numel`` entries as a flat bool mask (inverse of ``pack_bitmask``)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).flatten()[:numel].bool()


def packed_words(n: int, bits: int) -> int:
    """Number of int32 words holding ``n`` codes of ``bits`` bits."""
    return -(-n * bits // 32)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """``[rows, n]`` integers in 0..2**bits-1 -> ``[rows, ceil(n*bits/32)]`` int32, little-endian bit stream per row."""
    rows, n = codes.shape
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in 0..{(1 << bits) - 1} for {bits}-bit packing")
    stream = ((c.unsqueeze(-1) >> torch.arange(bits, device=c.device)) & 1).reshape(rows, n * bits)
    words = packed_words(n, bits)
    stream = torch.nn.functional.pad(stream, (0, words * 32 - n * bits)).reshape(rows, words, 32)
    value = (stream << torch.arange(32, device=c.device)).sum(-1)
    return torch.where(value >= 1 << 31, value - (1 << 32), value).to(torch.int32)


def unpack_bits(words: Tensor, bits: int, n: int) -> Tensor:
    """``[rows, W]`` int32 -> ``[rows, n]`` uint8 codes (inverse of ``pack_bits``)."""
    rows = words.shape[0]
    w = words.to(torch.int64) & 0xFFFFFFFF
    stream = ((w.unsqueeze(-1) >> torch.arange(32, device=w.device)) & 1).reshape(rows, -1)[:, : n * bits]
    codes = (stream.reshape(rows, n, bits) << torch.arange(bits, device=w.device)).sum(-1)
    return codes.to(torch.uint8)
