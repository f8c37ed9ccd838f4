"""Grouping a mixed-adapter pass's rows by slot (pure logic of the stacked LoRA path)."""

from __future__ import annotations

from workers.engine.row_groups import MAX_GROUP_SHARE, MIN_SAVED_READS, RowGroups, group_rows


def grouped(row_slots: list[int]) -> RowGroups:
    """Grouping however few reads it saves."""
    return group_rows(row_slots, max_group_share=1.0, min_saved_reads=0)


def blocks(row_slots: list[int]) -> list[list[int]]:
    """The rows at each group's block positions."""
    groups = grouped(row_slots)
    size = groups.size
    return [groups.gather[g * size : (g + 1) * size] for g in range(len(groups.slots))]


def test_rows_of_one_slot_share_a_group_in_order_of_first_use() -> None:
    groups = grouped([3, 1, 3, 1, 0, 3])
    assert groups.slots == [3, 1, 0]
    assert groups.size == 3
    assert blocks([3, 1, 3, 1, 0, 3]) == [[0, 2, 5], [1, 3, 1], [4, 4, 4]]


def test_scatter_finds_every_row_where_gather_put_it() -> None:
    for row_slots in ([2, 1, 2, 1], [5, 5, 5, 1], [1, 2, 3, 4], [7]):
        groups = grouped(row_slots)
        assert len(groups.gather) == len(groups.slots) * groups.size
        assert [groups.gather[p] for p in groups.scatter] == list(range(len(row_slots)))
        block_of = [p // groups.size for p in groups.scatter]
        assert [groups.slots[b] for b in block_of] == row_slots


def test_even_groups_need_no_padding() -> None:
    row_slots = [1 + row % 8 for row in range(64)]
    groups = group_rows(row_slots)
    assert (len(groups.slots), groups.size) == (8, 8)
    assert sorted(groups.gather) == list(range(64))


def test_padding_past_the_bound_falls_back_to_one_group_per_row() -> None:
    row_slots = [1] * 10 + [2, 3, 4, 5, 6, 7]  # 7 groups x 10 rows = 70 > 2 x 16
    groups = grouped(row_slots)
    assert groups.slots == row_slots
    assert groups.size == 1
    assert groups.gather == groups.scatter == list(range(16))


def test_padding_within_the_bound_keeps_the_groups() -> None:
    groups = grouped([1] * 7 + [2])  # 2 groups x 7 rows = 14 <= 2 x 8
    assert (groups.slots, groups.size) == ([1, 2], 7)


def test_grouping_that_saves_few_reads_keeps_one_group_per_row() -> None:
    pairs = [1 + row // 2 for row in range(2 * MIN_SAVED_READS)]  # groups of 2: saves R / 2
    assert group_rows(pairs[:-2]).size == 1  # saves one read too few
    assert (len(group_rows(pairs).slots), group_rows(pairs).size) == (MIN_SAVED_READS, 2)


def test_groups_near_the_row_count_keep_one_group_per_row() -> None:
    # 16 rows of 12 adapters: 12 reads instead of 16 do not pay for the grouped bmm.
    assert MAX_GROUP_SHARE * 16 < 12
    assert group_rows([1 + row % 12 for row in range(16)]).size == 1
    assert len(group_rows([1 + row % 8 for row in range(16)]).slots) == 8
