import pytest

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.tissues import SCALE_GROUPS, TISSUES, parse_tissues, scale_group, tissue


def test_table_matches_the_network_facts():
    assert [t.abbrev for t in TISSUES] == ["DT", "PT", "CAP", "TUFT", "VES", "PTC"]
    assert [t.task_id for t in TISSUES] == list(range(6))
    assert [t.scale_id for t in TISSUES] == [1, 1, 0, 0, 1, 3]
    assert [t.folder for t in TISSUES] == ["0_1_dt", "1_1_pt", "2_0_capsule", "3_0_tuft", "4_1_vessel", "5_3_ptc"]
    assert TISSUES[5].mask_suffix == "_mask_PTC_lumen"
    for t in TISSUES:
        assert t.folder.startswith(f"{t.task_id}_{t.scale_id}_")
        assert t.nominal_mpp == pytest.approx(10.0 / t.magnification)
        assert t in t.group.tissues
    assert len({t.colour for t in TISSUES}) == 6


def test_scale_groups_partition_the_tissues():
    assert {g.name: g.task_ids for g in SCALE_GROUPS} == {"5x": (2, 3), "10x": (0, 1, 4), "40x": (5,)}
    assert sorted(t for g in SCALE_GROUPS for t in g.task_ids) == list(range(6))


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", [0, 1, 2, 3, 4, 5]),
        ("10x", [0, 1, 4]),
        ("5x,40x", [2, 3, 5]),
        ("pt, DT", [0, 1]),
        ("5,2,PTC", [2, 5]),
    ],
)
def test_parse_tissues(spec, expected):
    assert [t.task_id for t in parse_tissues(spec)] == expected


@pytest.mark.parametrize("spec", ["", "XX", "DT,7", "20x"])
def test_parse_tissues_rejects_unknown(spec):
    with pytest.raises(InvalidInputError) as info:
        parse_tissues(spec)
    assert isinstance(info.value, ValueError)


def test_lookups():
    assert tissue("tuft").task_id == 3
    assert tissue(4).abbrev == "VES"
    assert scale_group("40X").task_ids == (5,)
    with pytest.raises(InvalidInputError, match="known tissues"):
        tissue(6)
