"""Channels: how updates (and downloaded models) go on the wire, with exact byte counts."""

from raysim.channels.base import Channel, Payload, roundtrip, with_feedback
from raysim.channels.codecs import FP16, Dense, Quantize, RandomK, Sign, TopK, keep_count

__all__ = ["Channel", "Payload", "roundtrip", "with_feedback", "Dense", "FP16", "Quantize", "TopK", "RandomK", "Sign",
           "keep_count"]
