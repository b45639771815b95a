"""Post-processing rules: thresholds, nesting, small components, ET suppression, largest component."""

from __future__ import annotations

import numpy as np
import pytest

from attnseg.infer.postprocess import (
    PostprocessConfig,
    enforce_nesting,
    keep_largest_component,
    postprocess,
    remove_small_components,
    suppress_small_et,
    threshold_regions,
)


def test_threshold_is_inclusive_and_drops_background():
    p = np.zeros((4, 2, 2, 2))
    p[1, 0, 0, 0] = 0.5
    p[1, 1, 1, 1] = 0.49
    r = threshold_regions(p)
    assert r.shape == (3, 2, 2, 2) and r[0, 0, 0, 0] and not r[0, 1, 1, 1]


def test_nesting_fix_of_reference_quirk():
    # ET=1, TC=0, WT=1 (reference wrote oedema) and ET=1, TC=WT=0 (reference wrote ET): both ET here
    r = np.zeros((3, 2, 1, 1), bool)
    r[:, 0, 0, 0] = [True, False, True]
    r[:, 1, 0, 0] = [True, False, False]
    n = enforce_nesting(r)
    assert n[:, 0, 0, 0].all() and n[:, 1, 0, 0].all()
    logits = np.where(np.concatenate([np.zeros((1, 2, 1, 1), bool), r]), 5.0, -5.0)
    assert postprocess(logits).ravel().tolist() == [3, 3]


def test_remove_small_components_connectivity():
    m = np.zeros((9, 9, 9), bool)
    m[1:4, 1:4, 1:4] = True          # 27 voxels
    m[6, 6, 6] = m[7, 7, 7] = True   # diagonal pair: 2 components with faces, 1 with 26-neighbourhood
    assert remove_small_components(m, 2, connectivity=1).sum() == 27
    assert remove_small_components(m, 2, connectivity=3).sum() == 29
    assert remove_small_components(m, 28).sum() == 0
    assert keep_largest_component(m).sum() == 27


def test_et_suppression_global_and_per_component():
    r = np.zeros((3, 20, 20, 20), bool)
    r[0, 1:4, 1:4, 1:4] = True       # 27 ET voxels
    r[0, 10:15, 10:15, 10:15] = True  # 125 ET voxels
    r = enforce_nesting(r)
    g = suppress_small_et(r, 100)     # total 152 >= 100: unchanged
    assert g[0].sum() == 152
    g = suppress_small_et(r, 200)     # total < 200: all ET becomes NCR/NET (still TC and WT)
    assert g[0].sum() == 0 and g[1].sum() == 152 and g[2].sum() == 152
    c = suppress_small_et(r, 100, per_component=True)  # only the 27-voxel component
    assert c[0].sum() == 125 and c[1].sum() == 152


def test_reference_pipeline_on_logits():
    logits = np.full((4, 30, 30, 30), -5.0)
    logits[3, 2:20, 2:20, 2:20] = 5.0   # WT
    logits[2, 5:15, 5:15, 5:15] = 5.0   # TC
    logits[1, 8:12, 8:12, 8:12] = 5.0   # ET: 64 voxels < 300 -> NCR/NET
    logits[3, 25:27, 25:27, 25:27] = 5.0  # 8-voxel WT speck: removed (< 10)
    out = postprocess(logits, PostprocessConfig.reference())
    assert set(np.unique(out).tolist()) == {0, 1, 2}
    assert (out == 1).sum() == 1000 and out[26, 26, 26] == 0
    out2 = postprocess(logits)  # defaults: no component removal, no ET rule
    assert (out2 == 3).sum() == 64 and out2[26, 26, 26] == 2


def test_classes_mode_with_largest_component_and_et_class():
    logits = np.zeros((4, 12, 12, 12))
    logits[0] = 1.0
    logits[3, 1:4, 1:4, 1:4] = 5.0    # ET blob 27
    logits[3, 8:10, 8:10, 8:10] = 5.0  # ET blob 8
    cfg = PostprocessConfig(kind="classes", largest_component=[3])
    out = postprocess(logits, cfg)
    assert (out == 3).sum() == 27
    cfg = PostprocessConfig(kind="classes", et_threshold=50, et_class=3)
    assert (postprocess(logits, cfg) == 1).sum() == 35
    with pytest.raises(ValueError, match="kind"):
        postprocess(logits, PostprocessConfig(kind="other"))
