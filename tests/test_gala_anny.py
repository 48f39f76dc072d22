"""gala's canonical space on the open anny body (104 bones, Z-up, facing -Y): what runs without SMPL-X."""

from __future__ import annotations

import math

import pytest
import torch

anny = pytest.importorskip("anny", reason="anny is installed by `make` (requirements/lock.txt)")


@pytest.fixture(scope="module")
def model():
    from layerforge.models.body.anny import load_anny

    return load_anny()


def test_canonical_pose_spreads_anny_legs_and_maps_exactly(model):
    from layerforge.models.gala.canonical import CanonicalSpace, pose_body

    space = CanonicalSpace(model)
    names = list(model.joint_names)
    rest = pose_body(model, None, torch.zeros(model.num_joints, 3))
    hip, ankle = names.index("upperleg01.L"), names.index("foot.L")
    a = rest.joints[ankle] - rest.joints[hip]
    b = space.body.joints[ankle] - space.body.joints[hip]
    assert math.degrees(math.acos(float(torch.dot(a, b) / a.norm() / b.norm()))) == pytest.approx(15.0, abs=0.1)
    assert float(space.body.joints[ankle, 0]) > float(rest.joints[ankle, 0])  # the left leg (+X side) goes outwards
    pose = torch.zeros(model.num_joints, 3)
    pose[names.index("lowerarm01.L")] = torch.tensor([0.0, 0.0, 1.2])
    pose[names.index("upperleg01.R")] = torch.tensor([0.5, 0.0, 0.0])
    posed = pose_body(model, None, pose)
    assert float((space.to_posed(space.body.vertices, posed) - posed.vertices).norm(dim=1).max()) < 1e-4
    back = space.to_canonical(posed.vertices, posed)
    err = (back - space.body.vertices).norm(dim=1)
    assert float(err.median()) < 1e-4 and float(err.max()) < 0.03  # metres; neighbours differ only where limbs touch
    assert model.openpose18 is not None and len(model.openpose18) == 18
