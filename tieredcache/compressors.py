"""
Compressors
===========

:class:`CompressingSerializer` wraps a serializer and compresses its output with one of
:data:`CODECS` when the payload reaches a size threshold:

========  =========================================================  =====================
name      module                                                     install
========  =========================================================  =====================
``zlib``  :mod:`zlib`                                                (standard library)
``gzip``  :mod:`gzip`                                                (standard library)
``lzma``  :mod:`lzma`                                                (standard library)
``lz4``   ``lz4.frame``                                              ``tieredcache[lz4]``
``zstd``  ``zstandard``                                              ``tieredcache[zstd]``
========  =========================================================  =====================

Each payload starts with one marker byte naming how it was stored, so a cache can change
codec (or threshold) and still read what an earlier configuration wrote, as long as the
codec is installed.
"""

from __future__ import annotations

import gzip
import importlib
import lzma
import typing as t
import zlib

from tieredcache.errors import ConfigurationError
from tieredcache.errors import DeserializationError
from tieredcache.serializers import PickleSerializer
from tieredcache.serializers import Serializer

__all__ = ["CODECS", "CompressingSerializer", "codec_functions"]

#: The codec names, in marker order (the marker of ``CODECS[i]`` is ``i + 1``).
CODECS = ("zlib", "gzip", "lzma", "lz4", "zstd")

_RAW = 0
_EXTRAS = {"lz4": ("lz4.frame", "lz4"), "zstd": ("zstandard", "zstd")}

Codec = tuple[t.Callable[[bytes], bytes], t.Callable[[bytes], bytes]]


def codec_functions(name: str) -> Codec:
    """``(compress, decompress)`` for the codec ``name``.

    :raises ConfigurationError: an unknown codec, or one whose package is not installed.
    """
    if name == "zlib":
        return zlib.compress, zlib.decompress
    if name == "gzip":
        return (lambda data: gzip.compress(data, mtime=0)), gzip.decompress
    if name == "lzma":
        return lzma.compress, lzma.decompress
    if name not in _EXTRAS:
        raise ConfigurationError(f"unknown compressor {name!r}; use one of {', '.join(CODECS)}")
    module_name, extra = _EXTRAS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {name} compressor needs the {module_name.partition('.')[0]!r} package; "
            f"install it with `pip install tieredcache[{extra}]`"
        ) from exc
    if name == "lz4":
        return module.compress, module.decompress
    compressor, decompressor = module.ZstdCompressor(), module.ZstdDecompressor()
    return compressor.compress, decompressor.decompress


class CompressingSerializer(Serializer):
    """Compresses the inner serializer's bytes with ``codec`` from ``threshold`` bytes on.

    Thread-safe. A payload that would not shrink is stored uncompressed.

    :param inner: the serializer whose output is compressed (pickle by default).
    :param codec: one of :data:`CODECS`.
    :param threshold: payloads of at least this many bytes are compressed.
    :raises ConfigurationError: an unknown or uninstalled codec, or a negative threshold.
    """

    def __init__(
        self, inner: Serializer | None = None, *, codec: str = "zlib", threshold: int = 1024
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigurationError(f"threshold must be an int >= 0, not {threshold!r}")
        self.inner = inner if inner is not None else PickleSerializer()
        self.codec = codec
        self.threshold = threshold
        self._compress, _ = codec_functions(codec)
        self._marker = bytes([CODECS.index(codec) + 1])

    def dumps(self, value: t.Any) -> bytes:
        data = self.inner.dumps(value)
        if len(data) >= self.threshold:
            packed = self._compress(data)
            if len(packed) < len(data):
                return self._marker + packed
        return bytes([_RAW]) + data

    def loads(self, data: bytes) -> t.Any:
        if not data:
            raise DeserializationError("empty payload")
        marker, body = data[0], bytes(data[1:])
        if marker == _RAW:
            return self.inner.loads(body)
        if not 0 < marker <= len(CODECS):
            raise DeserializationError(f"unknown compression marker {marker}")
        name = CODECS[marker - 1]
        try:
            _, decompress = codec_functions(name)
            raw = decompress(body)
        except ConfigurationError as exc:
            raise DeserializationError(str(exc)) from exc
        except Exception as exc:  # each codec has its own error type
            raise DeserializationError(f"cannot decompress a {name} payload: {exc}") from exc
        return self.inner.loads(raw)

    def __repr__(self) -> str:
        return (
            f"CompressingSerializer(inner={self.inner!r}, codec={self.codec!r}, "
            f"threshold={self.threshold})"
        )
