"""The differentiable face model pinned to the Deep3DFaceRecon conventions with hand-computed cases."""

import math

import pytest
import torch

from preprocessing.face3d import (Face3D, join_coeffs, project, rotation_matrix, sh_shade, split_coeffs,
                                  uv_to_image)


def test_coefficient_layout_round_trip():
    c = torch.arange(257, dtype=torch.float32)[None]
    parts = split_coeffs(c)
    assert parts["id"][0, 0] == 0 and parts["exp"][0, 0] == 80 and parts["tex"][0, 0] == 144
    assert parts["euler"][0].tolist() == [224, 225, 226]
    assert parts["gamma"][0, 0] == 227 and parts["gamma"].shape[-1] == 27
    assert parts["trans"][0].tolist() == [254, 255, 256]
    assert torch.equal(join_coeffs(**parts), c)
    with pytest.raises(ValueError, match="257"):
        split_coeffs(torch.zeros(1, 256))


def test_single_axis_rotations():
    h = math.pi / 2
    # yaw +90°: x axis -> -z (Ry = [[c,0,s],[0,1,0],[-s,0,c]])
    r = rotation_matrix(torch.tensor([0.0, h, 0.0]))
    assert torch.allclose(r @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 0, -1]), atol=1e-6)
    # pitch +90°: y axis -> +z
    r = rotation_matrix(torch.tensor([h, 0.0, 0.0]))
    assert torch.allclose(r @ torch.tensor([0.0, 1, 0]), torch.tensor([0.0, 0, 1]), atol=1e-6)
    # roll +90°: x axis -> +y
    r = rotation_matrix(torch.tensor([0.0, 0.0, h]))
    assert torch.allclose(r @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)


def test_rotation_order_is_rz_ry_rx():
    h = math.pi / 2
    r = rotation_matrix(torch.tensor([h, h, 0.0]))
    # Rx first: y -> z; then Ry: z -> x.  (Rx·Ry order would give y -> y.)
    assert torch.allclose(r @ torch.tensor([0.0, 1, 0]), torch.tensor([1.0, 0, 0]), atol=1e-6)
    e = torch.tensor([[0.3, -0.7, 0.2], [1.0, 0.5, -2.0]])
    r = rotation_matrix(e)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2), atol=1e-6)


def test_projection_known_point():
    p = torch.tensor([[0.5, -0.25, 1.0]])
    uvz = project(p, 224)
    assert torch.allclose(uvz[0], torch.tensor([1015 * 0.5 / 9 + 112, 1015 * -0.25 / 9 + 112, 9.0]), atol=1e-4)
    img = uv_to_image(uvz, 224)
    assert img[0, 1].item() == pytest.approx(224 - (1015 * -0.25 / 9 + 112), abs=1e-4)  # v up -> row down
    s = 512 / 224
    uvz512 = project(p, 512)
    assert torch.allclose(uvz512[0, :2], torch.tensor([1015 * s * 0.5 / 9 + 112 * s, 1015 * s * -0.25 / 9 + 112 * s]),
                          atol=1e-3)
    # the origin projects to the image centre at any size
    assert torch.allclose(project(torch.zeros(1, 3), 300)[0, :2], torch.tensor([150.0, 150.0]))


def test_flat_patch_normal_and_rotation(grid_model):
    face = Face3D(grid_model)
    c = torch.zeros(1, 257)
    out = face(c)
    assert torch.allclose(out.normals[0], torch.tensor([0.0, 0.0, 1.0]).expand_as(out.normals[0]), atol=1e-5)
    c[0, 225] = 0.4  # yaw: the normal turns with the face
    out = face(c)
    expect = torch.tensor([math.sin(0.4), 0.0, math.cos(0.4)])
    assert torch.allclose(out.normals[0, 45], expect, atol=1e-5)


def test_sh_of_a_constant_and_first_order():
    albedo = torch.full((1, 2, 3), 0.5)
    normals = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    gamma = torch.zeros(1, 27)
    color = sh_shade(albedo, normals, gamma)
    dc = 0.8 * math.pi / math.sqrt(4 * math.pi)  # 0.8 · a0 · c0 = 0.8 · sqrt(pi) / 2
    assert torch.allclose(color, torch.full_like(color, 0.5 * dc), atol=1e-6)
    gamma[0, 2] = 0.1  # red channel, the n_z band: a1·c1 = sqrt(pi)
    color = sh_shade(albedo, normals, gamma)
    assert color[0, 0, 0].item() == pytest.approx(0.5 * (dc + 0.1 * math.sqrt(math.pi)), abs=1e-6)
    assert color[0, 1, 0].item() == pytest.approx(0.5 * dc, abs=1e-6)  # n_z = 0
    assert color[0, 0, 1].item() == pytest.approx(0.5 * dc, abs=1e-6)  # green untouched


def test_shape_texture_linearity_and_landmarks(grid_model):
    face = Face3D(grid_model)
    c = torch.zeros(2, 257)
    c[1, 3] = 2.0  # id component 3
    c[1, 80 + 5] = -1.0  # exp component 5
    c[1, 144 + 7] = 1.5
    out = face(c)
    mean = torch.as_tensor(grid_model.mean_shape)
    expect = mean + (2.0 * torch.as_tensor(grid_model.id_base[:, 3]) -
                     torch.as_tensor(grid_model.exp_base[:, 5])).reshape(-1, 3)
    assert torch.allclose(out.shape[1], expect, atol=1e-6)
    assert torch.allclose(out.albedo[0], torch.full_like(out.albedo[0], 128 / 255))
    tex = (128 + 1.5 * torch.as_tensor(grid_model.tex_base[:, 7]).reshape(-1, 3)) / 255
    assert torch.allclose(out.albedo[1], tex, atol=1e-6)
    c[:, 224:227] = torch.tensor([0.1, -0.3, 0.05])
    c[:, 254:257] = torch.tensor([0.2, -0.1, 0.5])
    out = face(c, 512)
    assert torch.allclose(face.landmarks(c, 512), out.landmarks, atol=1e-3)
    assert torch.allclose(out.landmarks, out.image_xyz[:, :68, :2])  # keypoints 0..67 in the grid model


def test_gradients_flow(grid_model):
    face = Face3D(grid_model)
    c = torch.zeros(1, 257, requires_grad=True)
    out = face(c, 224)
    (out.landmarks.square().mean() + out.color.mean()).backward()
    g = c.grad[0]
    assert torch.isfinite(g).all()
    assert g[224:227].abs().sum() > 0 and g[254:257].abs().sum() > 0 and g[227:254].abs().sum() > 0
