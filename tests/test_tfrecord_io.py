"""TFRecord framing and tf.train.Example codec without TensorFlow, checked against TensorFlow."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from quiltflow.core.errors import UserError
from quiltflow.records.tfrecord_io import (
    TFRecordCorruptError,
    TFRecordWriter,
    _crc32c_small,
    crc32c,
    decode_example,
    encode_example,
    iter_records,
    masked_crc32c,
    read_examples,
)

EXAMPLES = [
    {
        "image/encoded": os.urandom(5000),
        "image/label": 2,
        "image/id": "a/b c.jpg",
        "image/group": "vid1",
    },
    {"image/encoded": b"", "image/label": 0, "image/id": "é/ü.png", "image/group": ""},
    {"image/encoded": os.urandom(70_000), "image/label": 41, "image/id": "x", "image/group": "g"},
]


def write_ours(path: Path, records: list[bytes]) -> Path:
    with open(path, "wb") as f:
        w = TFRecordWriter(f)
        for r in records:
            w.write(r)
    return path


def test_crc32c_known_vectors():
    # RFC 3720 (iSCSI) appendix B.4 test vectors, plus the usual check value.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"") == 0


@pytest.mark.parametrize("n", [1, 3, 4, 5, 63, 64, 65, 1023, 1024, 1025, 2048, 5000, 33_333])
def test_vectorised_crc_matches_byte_loop(n: int):
    data = os.urandom(n)
    assert crc32c(data) == _crc32c_small(data)
    assert crc32c(memoryview(data)) == crc32c(bytearray(data))


def test_example_codec_round_trip():
    ex = {
        "b": [b"x", b"", b"\x00\xff"],
        "i": [0, 1, -1, 2**63 - 1, -(2**63)],
        "f": [0.5, -2.25],
        "s": "hé",
    }
    got = decode_example(encode_example(ex))
    assert got == {
        "b": [b"x", b"", b"\x00\xff"],
        "i": ex["i"],
        "f": [0.5, -2.25],
        "s": ["hé".encode()],
    }
    assert encode_example(ex) == encode_example(dict(reversed(list(ex.items()))))  # key order


def test_decoder_accepts_unpacked_int64():
    # Feature{int64_list{value: 5, value: 300}} written unpacked (wire type 0), as old writers did.
    int64_list = b"\x08\x05\x08\xac\x02"
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list
    entry = b"\x0a\x01k" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    record = b"\x0a" + bytes([len(features)]) + features
    assert decode_example(record) == {"k": [5, 300]}


def test_reader_round_trip_and_writer_accounting(tmp_path: Path):
    records = [encode_example(e) for e in EXAMPLES]
    path = tmp_path / "a.tfrecord"
    with open(path, "wb") as f:
        w = TFRecordWriter(f)
        sizes = [w.write(r) for r in records]
    assert list(iter_records(path)) == records
    assert w.records == 3 and w.bytes_written == sum(sizes) == path.stat().st_size
    import hashlib

    assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    back = list(read_examples(path))
    assert back[0]["image/label"] == [2] and back[1]["image/id"] == ["é/ü.png".encode()]
    assert back[2]["image/encoded"] == [EXAMPLES[2]["image/encoded"]]


def test_reader_detects_corruption(tmp_path: Path):
    path = write_ours(tmp_path / "c.tfrecord", [encode_example(EXAMPLES[0])] * 2)
    good = path.read_bytes()

    flipped = bytearray(good)
    flipped[len(good) // 4] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(TFRecordCorruptError, match="data checksum at byte 0"):
        list(iter_records(path))
    assert len(list(iter_records(path, verify=False))) == 2

    path.write_bytes(good[:-3])
    with pytest.raises(TFRecordCorruptError, match="truncated record data"):
        list(iter_records(path))

    bad_len = bytearray(good)
    bad_len[0:8] = struct.pack("<Q", 7)
    path.write_bytes(bytes(bad_len))
    with pytest.raises(UserError, match="length checksum"):
        list(iter_records(path))


# ------------------------------------------------------------------------------ vs TensorFlow


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def test_tensorflow_reads_our_files_exactly(tf, tmp_path: Path):
    path = write_ours(tmp_path / "ours.tfrecord", [encode_example(e) for e in EXAMPLES])
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/label": tf.io.FixedLenFeature([], tf.int64),
        "image/id": tf.io.FixedLenFeature([], tf.string),
        "image/group": tf.io.FixedLenFeature([], tf.string),
    }
    got = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(str(path))]
    assert len(got) == len(EXAMPLES)
    for g, e in zip(got, EXAMPLES):
        assert g["image/encoded"].numpy() == e["image/encoded"]
        assert int(g["image/label"].numpy()) == e["image/label"]
        assert g["image/id"].numpy().decode() == e["image/id"]
        assert g["image/group"].numpy().decode() == e["image/group"]
    # Multi-valued and float features parse too, and protobuf agrees field by field.
    multi = encode_example({"i": [3, -4], "f": [1.5, 2.0], "b": [b"p", b"q"]})
    ex = tf.train.Example.FromString(multi)
    assert list(ex.features.feature["i"].int64_list.value) == [3, -4]
    assert list(ex.features.feature["f"].float_list.value) == [1.5, 2.0]
    assert list(ex.features.feature["b"].bytes_list.value) == [b"p", b"q"]


def test_we_read_files_written_by_tensorflow(tf, tmp_path: Path):
    path = tmp_path / "tf.tfrecord"
    protos = []
    with tf.io.TFRecordWriter(str(path)) as w:
        for e in EXAMPLES:
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[e["image/encoded"]])),
                        "image/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[e["image/label"], -7])),
                        "image/id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[e["image/id"].encode()])),
                        "score": tf.train.Feature(float_list=tf.train.FloatList(value=[0.25])),
                    }
                )
            )
            protos.append(ex.SerializeToString())
            w.write(protos[-1])
    assert list(iter_records(path)) == protos
    for got, e in zip(read_examples(path), EXAMPLES):
        assert got["image/encoded"] == [e["image/encoded"]]
        assert got["image/label"] == [e["image/label"], -7]
        assert got["image/id"] == [e["image/id"].encode()]
        assert got["score"] == [0.25]
    # Same payloads -> our framing is byte-identical to TensorFlow's.
    assert write_ours(tmp_path / "ours.tfrecord", protos).read_bytes() == path.read_bytes()


def test_masked_crc_matches_tensorflow_framing(tf, tmp_path: Path):
    path = tmp_path / "one.tfrecord"
    payload = os.urandom(1234)
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(payload)
    raw = path.read_bytes()
    assert struct.unpack_from("<I", raw, 8)[0] == masked_crc32c(raw[:8])
    assert struct.unpack_from("<I", raw, 12 + 1234)[0] == masked_crc32c(payload)
