import gzip

from corpus.readers import ReadStats, _line_blocks


def _blocks(path, block_bytes):
    stats = ReadStats()
    out = [(buf.to_pybytes(), first) for buf, first in _line_blocks(path, block_bytes, stats)]
    return out, stats


def test_line_blocks_cut_at_newlines_and_number_lines(tmp_path):
    lines = [b'{"q": "%d"}' % i + b" " * (i % 7) for i in range(200)]
    lines[50] = b'{"q": "' + b"x" * 300 + b'"}'  # longer than a block: carried until it ends
    data = b"\n".join(lines)  # the last line has no newline
    for name, write in (("plain.jsonl", open), ("packed.jsonl.gz", gzip.open)):
        path = tmp_path / name
        with write(path, "wb") as f:
            f.write(data)
        blocks, stats = _blocks(path, 64)
        assert b"".join(b for b, _ in blocks) == data
        assert all(b.endswith(b"\n") for b, _ in blocks[:-1])
        line = 1
        for block, first in blocks:
            assert first == line
            line += block.count(b"\n")
        assert stats.bytes_read == len(data)


def test_line_blocks_skip_a_blank_end(tmp_path):
    path = tmp_path / "blank-end.jsonl"
    path.write_bytes(b'{"q": "a"}\n  \n \t')
    blocks, _ = _blocks(path, 1 << 20)
    assert [b for b, _ in blocks] == [b'{"q": "a"}\n  \n']
