"""The cell key, its one mapping to and from results rows, and the one comma-separated list
parser of the sweep, the in-process floor and the locustfile."""

from __future__ import annotations

import dataclasses

import pytest

from loadtest.cells import (
    COLUMNS,
    IN_PROCESS,
    KEY_COLUMNS,
    SERVED,
    CellKey,
    empty_row,
    read_results,
    request_name,
    write_results,
)
from loadtest.cli import UsageError, comma_list
from loadtest.plan import DEMO_GRID


def test_cell_key_round_trips_through_results_csv(tmp_path):
    served = CellKey.served("onnx", "cpu", "rest", "separable", 32, 8, repeat=2)
    floor = CellKey.in_process("tensorflow", "cuda", "standard", 256)
    rows = [empty_row(served, errors=-1), empty_row(floor)]
    write_results(tmp_path, rows)
    (tmp_path / "results.json").unlink()  # read the CSV back, not the JSON
    assert [CellKey.from_row(r) for r in read_results(tmp_path)] == [served, floor]
    assert CellKey.from_row(served.to_row()) == served
    assert set(KEY_COLUMNS) <= set(COLUMNS)


def test_cell_key_spells_the_ids_runs_already_use():
    key = CellKey.served("onnx", "cpu", "grpc", "standard", 32, 8)
    assert key.mode == SERVED
    assert key.slug == "onnx-standard-grpc-b32-c8"
    assert dataclasses.replace(key, repeat=1).slug == "onnx-standard-grpc-b32-c8-r1"
    assert key.sample_key == "onnx|cpu|standard|grpc|32|8|0"
    assert key.request_name == request_name("standard", 32) == "standard batch=32"
    floor = CellKey.in_process("onnx", "cpu", "separable", 1, repeat=3)
    assert (floor.mode, floor.protocol, floor.concurrency) == (IN_PROCESS, "none", 1)
    assert floor.cell == dataclasses.replace(floor, repeat=0)
    # Results written before repetitions existed read as repeat 0.
    old = {c: v for c, v in key.to_row().items() if c != "repeat"}
    assert CellKey.from_row(old) == key


def test_the_grid_plans_cell_keys():
    cells = DEMO_GRID.served_cells("cuda")
    assert all(isinstance(c, CellKey) and c.device == "cuda" and c.mode == SERVED for c in cells)
    assert len(set(cells)) == len(cells) == 32


@pytest.mark.parametrize(
    ("text", "repeated", "message"),
    [
        ("", "drop", "--x: expected a comma-separated list, got ''"),
        ("  ", "drop", "--x: expected a comma-separated list, got '  '"),
        ("1,,8", "drop", "--x: empty item in '1,,8'"),
        ("a, ", "drop", "--x: empty item in 'a, '"),
        ("a,b,a", "reject", "--x: repeated item in 'a,b,a'"),
    ],
)
def test_comma_list_errors_name_the_flag_in_one_line(text, repeated, message):
    with pytest.raises(UsageError) as raised:
        comma_list(text, "--x", repeated=repeated)
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)  # argparse types and Locust's form catch these


def test_comma_list_strips_and_keeps_order():
    assert comma_list(" b , a,b", "--x") == ["b", "a"]
    assert comma_list("b,a", "--x", repeated="reject") == ["b", "a"]
