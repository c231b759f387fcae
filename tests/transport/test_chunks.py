"""The upload stream: pieces of any size are re-cut into full chunks, and the trailer proves them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from secagg.errors import UpdateRejected
from secagg.transport.chunks import MAX_CHUNK, coalesce, encode_stream, read_all


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [0],
        [10],
        [MAX_CHUNK],
        [MAX_CHUNK + 1],
        [3] * 5,
        [MAX_CHUNK - 1, 2, 2 * MAX_CHUNK + 5, 7],
        [49_000] * 200,
    ],
    ids=["none", "empty", "small", "one-chunk", "one-over", "tiny-many", "mixed", "he-frames"],
)
def test_pieces_are_recut_into_full_chunks_and_read_back(sizes: list[int]) -> None:
    parts = [os.urandom(n) for n in sizes]
    chunks = list(encode_stream({"k": 1}, coalesce(parts)))
    data = [c.data for c in chunks if c.WhichOneof("part") == "data"]
    assert all(len(d) == MAX_CHUNK for d in data[:-1]) and all(0 < len(d) <= MAX_CHUNK for d in data)
    assert len(data) == -(-sum(sizes) // MAX_CHUNK)  # many small frames do not become many messages
    header, body = read_all(iter(chunks), max_bytes=10 * MAX_CHUNK)
    assert header == {"k": 1} and body == b"".join(parts)


def test_without_coalesce_each_piece_goes_out_as_it_is_made() -> None:
    """Live streams (admin log follow) must not wait for a full chunk."""
    sent: list[int] = []

    def live() -> Iterator[bytes]:
        for n in range(3):
            sent.append(n)
            yield b"line %d\n" % n

    stream = encode_stream({}, live())
    next(stream)  # header
    assert next(stream).data == b"line 0\n" and sent == [0]


def test_a_changed_chunk_fails_the_trailer() -> None:
    chunks = list(encode_stream({}, [os.urandom(1000)]))
    chunks[1].data = bytes([chunks[1].data[0] ^ 1]) + chunks[1].data[1:]  # always a change (random data)
    with pytest.raises(UpdateRejected):
        read_all(iter(chunks), max_bytes=MAX_CHUNK)
