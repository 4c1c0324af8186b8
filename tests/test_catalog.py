"""ItemCatalog: validation, lookups, collisions, the per-level children, persistence."""

import pytest
import torch

from xgr_toolkit import CatalogError, ItemCatalog
from xgr_toolkit.synthetic import random_catalog


def _catalog(ids, codes, num_codes=4):
    return ItemCatalog(torch.as_tensor(ids), torch.as_tensor(codes), num_codes)


def _write_csv(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("codes, message", [
    ([[0, 1], [4, 0]], "item 8: code 4 at level 0 is out of range; allowed 0..3"),
    ([[0, -1], [1, 0]], "item 7: code -1 at level 1 is out of range; allowed 0..3"),
])
def test_out_of_range_codes_raise(codes, message):
    with pytest.raises(CatalogError, match=message.replace(".", r"\.")):
        _catalog([7, 8], codes)


def test_duplicate_item_ids_raise():
    with pytest.raises(CatalogError, match="duplicate item id 5; item ids must be unique"):
        _catalog([5, 3, 5], [[0, 0], [0, 1], [1, 1]])


@pytest.mark.parametrize("ids, codes, message", [
    ([1, 2], [[0, 0]], r"item_ids must be \[N\] and codes \[N, L\]; got \(2,\) and \(1, 2\)"),
    ([], torch.zeros(0, 2, dtype=torch.int64), "the catalog has no items"),
])
def test_bad_shapes_raise(ids, codes, message):
    with pytest.raises(CatalogError, match=message):
        _catalog(ids, codes)


@pytest.mark.parametrize("text, message", [
    ("id,code_0,code_1\n1,0,0\n", "header must be item_id,code_0,...,code_{L-1}; got ['id', 'code_0', 'code_1']"),
    ("item_id,code_1,code_0\n1,0,0\n", "header must be item_id"),
    ("", "header must be item_id"),
    ("item_id,code_0,code_1\n1,0,0\n2,x,1\n", ":3: values must be integers; got ['2', 'x', '1']"),
    ("item_id,code_0,code_1\n1,0,0\n2,1\n", ":3: 2 values, expected 3"),
    ("item_id,code_0\n1,0\n", "1 code columns, but the model has 2 levels"),
    ("item_id,code_0,code_1\n", "no items"),
    ("item_id,code_0,code_1\n1,0,9\n", "item 1: code 9 at level 1 is out of range; allowed 0..3"),
])
def test_bad_csv_raises(tmp_path, text, message):
    path = _write_csv(tmp_path / "items.csv", text)
    with pytest.raises(CatalogError) as err:
        ItemCatalog.from_csv(path, num_codes=4, levels=2)
    assert message in str(err.value)


def test_csv_reads_ids_and_codes_and_saves(tmp_path):
    path = _write_csv(tmp_path / "items.csv", "item_id,code_0,code_1\n42,3,1\n7,0,2\n")
    catalog = ItemCatalog.from_csv(path, num_codes=4, levels=2)
    assert catalog.item_ids.tolist() == [42, 7] and catalog.codes.tolist() == [[3, 1], [0, 2]]
    catalog.save(tmp_path / "catalog.safetensors")  # ids and codes are columns of one table
    assert ItemCatalog.load(tmp_path / "catalog.safetensors").codes.tolist() == [[3, 1], [0, 2]]


def test_collisions_are_kept_and_reported():
    catalog = _catalog([9, 4, 6, 2, 8], [[1, 2], [1, 2], [0, 3], [1, 2], [0, 3]])
    assert catalog.collisions() == {(0, 3): [6, 8], (1, 2): [2, 4, 9]}
    assert len(catalog) == 5 and catalog.num_sids == 2
    assert _catalog([1, 2], [[0, 0], [0, 1]]).collisions() == {}


def test_item_and_sid_lookups():
    catalog = _catalog([30, 10, 20], [[2, 1], [0, 3], [2, 1]])
    assert catalog.sids_of_items(torch.tensor([20, 10])).tolist() == [[2, 1], [0, 3]]
    assert catalog.rows_of_items(torch.tensor([10, 30])).tolist() == [1, 0]
    assert catalog.items_of_sid((2, 1)) == [20, 30]
    assert catalog.items_of_sid([0, 3]) == [10]
    assert catalog.items_of_sid((3, 3)) == [] and catalog.sid_index((1, 0)) == -1
    assert [catalog.sid_of_key(int(k)) for k in catalog.sid_keys] == [(0, 3), (2, 1)]
    with pytest.raises(CatalogError, match=r"unknown item id\(s\): \[11, 99\]"):
        catalog.sids_of_items(torch.tensor([10, 11, 99]))


def _python_trie(catalog):
    """level -> {prefix: sorted child codes}, built by walking every SID."""
    trie = [dict() for _ in range(catalog.levels)]
    for sid in catalog.codes.tolist():
        for level in range(catalog.levels):
            trie[level].setdefault(tuple(sid[:level]), set()).add(sid[level])
    return [{prefix: sorted(codes) for prefix, codes in level.items()} for level in trie]


def _csr_as_dict(catalog, level):
    children = catalog.children[level]
    offsets = children.offsets.tolist()
    prefixes = [catalog.sid_of_key(int(key))[catalog.levels - level:] for key in children.prefix_keys]
    return {prefix: children.codes[offsets[i]:offsets[i + 1]].tolist() for i, prefix in enumerate(prefixes)}


def test_children_csr_equals_a_python_trie():
    catalog = random_catalog(300, levels=3, codes=8, seed=4, collisions=10)
    trie = _python_trie(catalog)
    for level in range(3):
        assert _csr_as_dict(catalog, level) == trie[level]
        keys = catalog.children[level].prefix_keys
        assert keys.tolist() == sorted(set(keys.tolist()))


def test_save_load_round_trip(tmp_path):
    catalog = random_catalog(50, levels=3, codes=8, seed=5, collisions=4)
    catalog.save(tmp_path / "catalog.safetensors")
    loaded = ItemCatalog.load(tmp_path / "catalog.safetensors")
    assert loaded.num_codes == 8 and loaded.levels == 3
    assert loaded.item_ids.equal(catalog.item_ids) and loaded.codes.equal(catalog.codes)
    assert loaded.collisions() == catalog.collisions()
    for level in range(3):
        assert _csr_as_dict(loaded, level) == _csr_as_dict(catalog, level)


def test_random_catalog_collisions_and_ids():
    catalog = random_catalog(100, levels=2, codes=16, seed=6, collisions=7)
    assert sorted(catalog.item_ids.tolist()) == list(range(1000, 1100))
    assert sum(len(items) - 1 for items in catalog.collisions().values()) == 7
