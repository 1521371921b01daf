"""The one list, number and priority parser every command uses."""

from __future__ import annotations

import pytest

from corpus.errors import KalmixError
from kalmix.commands.options import numbers, priority, split_list


def test_split_list_strips_and_drops_empties():
    assert split_list(" a, b,,c ,") == ("a", "b", "c")
    assert split_list(None) == split_list("") == split_list(" , ") == ()


def test_numbers_parse_or_fail_in_one_line():
    assert numbers("384, 256,128", "--matryoshka-dims", int) == (384, 256, 128)
    assert numbers("0.6,0.4", "--weights") == (0.6, 0.4)
    assert numbers(None, "--weights") is None
    with pytest.raises(KalmixError, match="--weights takes comma-separated numbers"):
        numbers("0.6,x", "--weights")
    with pytest.raises(KalmixError, match="--matryoshka-dims takes comma-separated integers"):
        numbers("384,2.5", "--matryoshka-dims", int)


def test_priority_has_one_grammar_for_dedup_and_semdedup():
    assert priority(None) == ("source", ())
    assert (
        priority("curated,web") == priority("source=curated,web") == ("source", ("curated", "web"))
    )
    assert priority("dataset=a,b") == ("_dataset", ("a", "b"))
    for bad in ("source=", "=a,b", ","):
        with pytest.raises(KalmixError, match=r"is not \[COLUMN=\]V1,V2"):
            priority(bad)


def test_semdedup_takes_the_dedup_priority_grammar(cli, ws):
    for spec in ("curated", "source=curated"):
        result = cli("semdedup", "nope", "--priority", spec)
        assert "unknown dataset" in str(result.exception), result.output
    result = cli("semdedup", "nope", "--priority", "source=")
    assert "is not [COLUMN=]V1,V2" in str(result.exception), result.output
