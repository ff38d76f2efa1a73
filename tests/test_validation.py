"""The argument-check helpers of hopfield_gag._validation that re-implement a torch utility for speed."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hopfield_gag._validation import broadcast_shapes

dims = st.lists(st.sampled_from([0, 1, 2, 3]), max_size=4).map(tuple)


@given(st.lists(dims, min_size=1, max_size=4))
def test_broadcast_shapes_agrees_with_torch(shapes):
    try:
        want = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            broadcast_shapes(*shapes)
        return
    assert broadcast_shapes(*shapes) == want
