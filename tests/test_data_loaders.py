"""Loaders of interaction logs, the leave-one-out split, the history cap, SID files (synthetic and real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xgr_toolkit import CatalogError, ItemCatalog
from xgr_toolkit.data import (
    DataError,
    cap_history,
    leave_one_out,
    load_inter,
    load_interactions,
    load_sequences,
    load_sid_json,
    load_sids,
    save_sid_csv,
    save_sid_json,
    sid_report,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/amazon-beauty"
needs_beauty = pytest.mark.skipif(not (DATA / "sequences.txt").is_file(),
                                  reason=f"Amazon Beauty data not found at {DATA} (it lives in ../shared, never in "
                                         "the repository: its licence forbids redistribution)")


# ---- sequences.txt ----------------------------------------------------------------------------------
def test_load_sequences(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 1 2 3 4 5\n2 6 7 8\n\n7 3 2\n")
    data = load_sequences(path)
    assert data.sequences == {1: [1, 2, 3, 4, 5], 2: [6, 7, 8], 7: [3, 2]}
    assert data.num_interactions == 10 and data.item_ids == list(range(1, 9))


@pytest.mark.parametrize(("text", "message"), [("1 a 2\n", "item id must be an integer"),
                                               ("1 0 2\n", "1-based"), ("5\n", "expected 'user_id item_id"),
                                               ("1 2 3\n1 4 5\n", "appears twice"), ("\n", "no users")])
def test_load_sequences_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "seq.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_sequences(path)


# ---- RecBole .inter ---------------------------------------------------------------------------------
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "2\t7\t5.0\t300\n1\t3\t4.0\t200\n1\t1\t5.0\t100\n2\t5\t3.0\t100\n1\t2\t1.0\t200\n")


def test_load_inter_sorts_each_user_by_timestamp(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text(INTER)
    data = load_inter(path)
    # user 1: t=100 item 1, then the two t=200 items in file order (3 before 2)
    assert data.sequences == {1: [1, 3, 2], 2: [5, 7]}
    assert data.item_index == {} and data.user_index == {}
    assert load_interactions(path).sequences == data.sequences  # dispatch by suffix


def test_load_inter_maps_string_tokens_to_ids(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("item_id:token\tuser_id:token\ttimestamp:float\nB0A\tu1\t2\nB0B\tu1\t1\nB0A\tu2\t5\n")
    data = load_inter(path)
    assert data.item_index == {"B0B": 1, "B0A": 2}  # ids in order of first appearance in time
    assert data.user_index == {"u1": 1, "u2": 2}
    assert data.sequences == {1: [1, 2], 2: [2]}


@pytest.mark.parametrize(("text", "message"), [
    ("user_id:token\titem_id:token\n1\t2\n", r"no field\(s\) \['timestamp'\]"),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\n", "2 fields, the header has 3"),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnoon\n", "timestamp must be a number"),
    ("", "empty file"),
])
def test_load_inter_errors(tmp_path, text, message):
    path = tmp_path / "x.inter"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_inter(path)


def test_load_interactions_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_interactions(tmp_path / "nope.txt")


# ---- split and history cap --------------------------------------------------------------------------
def test_leave_one_out_split_cases_and_samples():
    split = leave_one_out({1: [1, 2, 3, 4, 5], 2: [6, 7, 8], 3: [9, 10]})
    assert split.users == [1, 2] and split.dropped_users == 1
    assert split.train == [[1, 2, 3], [6]] and split.valid == [4, 7] and split.test == [5, 8]
    test = split.cases("test")
    assert [(c.user, c.history, c.target) for c in test] == [(1, [1, 2, 3, 4], 5), (2, [6, 7], 8)]
    valid = split.cases("valid", max_history=2)
    assert [(c.history, c.target) for c in valid] == [([2, 3], 4), ([6], 7)]
    assert split.training_samples() == [([1], 2), ([1, 2], 3)]  # user 2's training part is one item
    assert split.training_samples(max_history=1) == [([1], 2), ([2], 3)]
    assert len(split.cases("test", limit_users=1)) == 1 and len(split.slice(1)) == 1
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        split.cases("train")


def test_cap_history():
    assert cap_history(list(range(30))) == list(range(10, 30))
    assert cap_history([1, 2, 3], 5) == [1, 2, 3]
    with pytest.raises(ValueError):
        cap_history([1], 0)


def test_leave_one_out_needs_three_items():
    with pytest.raises(ValueError, match="3 items"):
        leave_one_out({1: [1, 2]})


# ---- SID files ----------------------------------------------------------------------------------------
def test_sid_json_keys_are_zero_based_and_collisions_are_kept(tmp_path):
    path = tmp_path / "sids.json"
    path.write_text(json.dumps({"0": ["<a_3>", "<b_1>", "<c_0>"], "1": ["<a_3>", "<b_1>", "<c_0>"],
                                "4": ["<a_0>", "<b_7>", "<c_2>"]}))
    catalog = load_sid_json(path, num_codes=8)
    assert catalog.item_ids.tolist() == [1, 2, 5] and catalog.levels == 3 and catalog.num_codes == 8
    assert catalog.sids_of_items(torch.tensor([5])).tolist() == [[0, 7, 2]]
    assert catalog.collisions() == {(3, 1, 0): [1, 2]}
    assert load_sid_json(path).num_codes == 8  # largest code + 1


def test_sid_json_and_csv_round_trip(tmp_path):
    codes = torch.tensor([[1, 2], [3, 0], [1, 2]])
    catalog = ItemCatalog(torch.tensor([3, 1, 2]), codes, 4)
    json_path = save_sid_json(catalog, tmp_path / "s.json")
    assert json.loads(json_path.read_text()) == {"0": ["<a_3>", "<b_0>"], "1": ["<a_1>", "<b_2>"],
                                                 "2": ["<a_1>", "<b_2>"]}
    for path in (json_path, save_sid_csv(catalog, tmp_path / "s.csv")):
        back = load_sids(path, 4)
        assert torch.equal(back.sids_of_items(torch.tensor([1, 2, 3])), catalog.sids_of_items(torch.tensor([1, 2, 3])))
    assert load_sids(tmp_path / "s.csv").num_codes == 4  # CSV: largest code + 1 as well


@pytest.mark.parametrize(("table", "message"), [
    ({"0": ["<b_1>", "<b_2>"]}, "level 0 token must look like '<a_CODE>'"),
    ({"0": ["<a_1>"], "1": ["<a_1>", "<b_1>"]}, "2 tokens, but the first entry has 1"),
    ({"x": ["<a_1>"]}, "0-based item indices"),
    ({"0": ["<a_9>"]}, "does not fit 8 codes"),
    ({"0": "<a_1>"}, "non-empty list"),
])
def test_sid_json_errors(tmp_path, table, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(table))
    with pytest.raises(CatalogError, match=message):
        load_sid_json(path, num_codes=8)


# ---- the real data (skipped where ../shared/data/amazon-beauty is absent) ----------------------------
@needs_beauty
def test_beauty_sequences_and_split():
    data = load_sequences(DATA / "sequences.txt")
    assert len(data.sequences) == 22_363 and len(data.item_ids) == 12_101 and data.num_interactions == 198_502
    split = leave_one_out(data)
    assert len(split) == 22_363 and split.dropped_users == 0
    assert split.users[0] == 1 and split.train[0] == [1, 2, 3] and (split.valid[0], split.test[0]) == (4, 5)
    assert len(split.training_samples()) == 131_413  # every prefix of every training part
    assert max(len(c.history) for c in split.cases("test")) == 20


@needs_beauty
def test_beauty_letter_sids():
    catalog = load_sid_json(DATA / "semantic_ids.letter.json", num_codes=256)
    assert len(catalog) == 12_101 and catalog.levels == 4 and catalog.num_codes == 256
    assert catalog.num_sids == 12_088 and sum(len(v) for v in catalog.collisions().values()) == 24
    assert int(catalog.item_ids.min()) == 1 and int(catalog.item_ids.max()) == 12_101
    assert catalog.sids_of_items(torch.tensor([1])).tolist() == [[183, 70, 232, 6]]  # key "0"
    report = sid_report(catalog.codes)
    assert report.colliding_items == 13 and report.codes_used[1:] == [256, 256, 256]
