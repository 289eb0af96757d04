"""An utterance written in pieces (long recordings): ShardWriter's begin_utterance,
append_frames and end_utterance, so that memory holds one piece, not the recording."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ..errors import OutputError
from .buffers import SHARD_ROW_BYTES, ShardRow, UtteranceStream
from .checksums import RowsHasher, digest
from .files import WRITE_ERRORS
from .utterance import layer_value


class StreamedUtterances:
    """ShardWriter's methods for an utterance whose frames arrive in pieces (see writer.py for
    the attributes they share)."""

    def begin_utterance(self, utt_id: str, source: str, duration: float, frames: int, flags: str = "",
                        source_size: int = -1, source_mtime_ns: int = -1, source_xxh3: str = "",
                        metadata: Optional[dict] = None) -> None:
        """Start an utterance whose frames arrive in pieces, so that memory holds one piece,
        not the recording: append_frames() each piece in order, then end_utterance()."""
        if utt_id in self._known:
            raise OutputError(f"utterance {utt_id} is already stored in {self.out}")
        if frames < 1:
            raise ValueError(f"{utt_id}: no frames to store")
        size = SHARD_ROW_BYTES + len(utt_id) + len(source) + len(flags) + frames * self._frame_bytes()
        if self._rows and self._size + size > self.options.shard_size_bytes:
            self.commit()
        self._flush()
        if self._file is None:
            self._open_shard()
        offset = self._next_offset()
        row = ShardRow(utt_id, str(source), float(duration), int(frames), flags, offset, source_size,
                       source_mtime_ns, source_xxh3, metadata=dict(metadata or {}))
        self._stream = UtteranceStream(row, size)

    def append_frames(self, states: dict) -> None:
        """The next frames of the open utterance: layer -> [n, width], n equal for all layers."""
        stream = self._stream
        if stream is None:
            raise RuntimeError("append_frames() without begin_utterance()")
        row = stream.row
        count, pieces = None, {}
        for name in self._layers:  # every width is known before a first matrix is made
            piece = layer_value(states, name)
            piece = None if piece is None else np.asarray(piece)
            if piece is None or piece.ndim != 2 or (count is not None and len(piece) != count):
                raise ValueError(f"{row.utt_id}: bad piece for layer {name}")
            count = len(piece)
            if stream.written + count > row.frames:
                raise ValueError(f"{row.utt_id}: more than the announced {row.frames} frames")
            if self.options.store_frames:
                self._check_width(row.utt_id, f"layers/{name}/frames", piece.shape[1])
            pieces[name] = piece
        try:
            for name, piece in pieces.items():
                if self.options.store_frames:
                    key = f"layers/{name}/frames"
                    converted = self._converted(row.utt_id, key, piece)
                    self._write_block(key, row.offset + stream.written, converted)
                    stream.hashers.setdefault(key, RowsHasher()).update(converted)
                if self.options.store_mean:
                    stream.sums[name] = stream.sums.get(name, 0.0) + piece.sum(axis=0, dtype=np.float64)
        except WRITE_ERRORS as error:
            self._fail(error)
        stream.written += count or 0

    def end_utterance(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            raise RuntimeError("end_utterance() without begin_utterance()")
        row = stream.row
        if stream.written != row.frames:
            raise ValueError(f"{row.utt_id}: {stream.written} frames written, {row.frames} announced")
        try:
            if self.options.store_mean:
                for name in self._layers:
                    key = f"layers/{name}/mean"
                    mean = (stream.sums[name] / row.frames).astype(np.float32)[None]
                    self._check_width(row.utt_id, key, mean.shape[1])
                    converted = self._converted(row.utt_id, key, mean)
                    self._write_block(key, len(self._rows), converted)
                    row.checksums[key] = digest(converted)
        except WRITE_ERRORS as error:
            self._fail(error)
        row.checksums.update((key, hasher.intdigest()) for key, hasher in stream.hashers.items())
        self._rows.append(row)
        self._flushed = len(self._rows)
        self._known.add(row.utt_id)
        self._size += stream.size
        if self._size >= self.options.shard_size_bytes or time.monotonic() - self._started >= self.options.commit_seconds:
            self.commit()

    def abort_utterance(self) -> None:
        """Give up the utterance being streamed: what it wrote is overwritten or trimmed."""
        self._stream = None

