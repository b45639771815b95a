import numpy as np
import pytest

from attnseg.data import DataError
from attnseg.data.labels import (
    brats_to_classes,
    brats_to_regions,
    classes_to_brats,
    classes_to_regions,
    regions_to_brats,
    regions_to_classes,
    remap_labels,
)


def random_brats(convention: str, seed: int = 0) -> np.ndarray:
    values = {"brats2020": [0, 1, 2, 4], "brats2023": [0, 1, 2, 3]}[convention]
    return np.random.default_rng(seed).choice(values, size=(9, 8, 7)).astype(np.uint8)


@pytest.mark.parametrize("convention", ["brats2020", "brats2023"])
def test_brats_round_trips_exactly(convention):
    lab = random_brats(convention)
    cls = brats_to_classes(lab, convention)
    assert set(np.unique(cls)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(classes_to_brats(cls, convention), lab)
    reg = brats_to_regions(lab, convention)
    assert reg.shape == (3, *lab.shape) and reg.dtype == bool
    np.testing.assert_array_equal(regions_to_brats(reg, convention), lab)
    # probabilities are binarised at 0.5
    np.testing.assert_array_equal(regions_to_brats(reg * 0.8 + 0.1, convention), lab)


def test_region_definitions_match_brats():
    lab = np.array([0, 1, 2, 4], dtype=np.uint8)
    et, tc, wt = brats_to_regions(lab, "brats2020")
    assert et.tolist() == [False, False, False, True]
    assert tc.tolist() == [False, True, False, True]
    assert wt.tolist() == [False, True, True, True]
    lab23 = np.array([0, 1, 2, 3], dtype=np.uint8)
    np.testing.assert_array_equal(brats_to_regions(lab23, "brats2023"), np.stack([et, tc, wt]))


def test_non_nested_regions_resolved_upwards():
    # voxels: (ET, TC, WT) = ET only, ET+WT (the reference's quirk gave ED), TC only, WT only, none
    r = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0]], dtype=bool)
    assert regions_to_classes(r).tolist() == [3, 3, 1, 2, 0]
    assert regions_to_brats(r, "brats2020").tolist() == [4, 4, 1, 2, 0]
    # result is always nested: classes -> regions satisfies ET ⊂ TC ⊂ WT
    et, tc, wt = classes_to_regions(regions_to_classes(r))
    assert np.all(~et | tc) and np.all(~tc | wt)


def test_brats_values_outside_convention_raise():
    with pytest.raises(DataError, match=r"\[3\]"):
        brats_to_classes(np.array([0, 1, 3]), "brats2020")
    with pytest.raises(DataError, match=r"\[4\]"):
        brats_to_classes(np.array([0, 4]), "brats2023")
    with pytest.raises(ValueError, match="convention"):
        brats_to_classes(np.array([0]), "kits")


def test_remap_labels_subset_and_default():
    lab = np.array([[0, 17, 53], [99, 17, 2]])
    out = remap_labels(lab, {17: 1, 53: 2})
    assert out.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert out.dtype == np.uint8
    with pytest.raises(DataError, match=r"\[2, 99\]"):
        remap_labels(lab, {0: 0, 17: 1, 53: 2}, default=None)
    # negative / large values take the non-lookup-table path
    big = np.array([-5, 70000, 3])
    assert remap_labels(big, {-5: 1, 70000: 2}, dtype=np.int64).tolist() == [1, 2, 0]
