"""``make shape-model``: build the pelvis shape model from the JHU atlas.

    python -m pipeline.segment.build_shape_model ATLAS_DIR [--out FILE] [--modes K]

``ATLAS_DIR`` holds ``surface/{left,right,sacrum}/*_cpd.vtk``: 40 subjects,
5000 vertices per bone in vertex correspondence, each subject in its own CT's
LPS frame (Han et al., Phys. Med. Biol. 2019; CC BY 4.0; not for clinical use).

1. The template triangulation of each bone (identical across subjects) is
   made a closed 2-manifold: a fin triangle of the sacrum is dropped, the
   unused vertex removed, and the few small boundary loops (2-3 per bone)
   closed by fans, so every instance of the model is a closed solid.
2. The three bones of a subject form one joint shape (their relative pose
   is anatomy). Generalised Procrustes analysis aligns the 40 joint shapes
   (translation, rotation, scale); PCA of the aligned shapes gives the modes.
3. Landmarks are found on the mean shape: each acetabulum (the concave
   spherical cup, by a vote of the surface normals for its centre), the
   top of the sacrum (the S1 endplate, upward-facing vertices at its top)
   and its caudal end (S3, where the atlas stops).
4. Leave-one-out: each subject is left out, the model rebuilt from the
   other 39, and the subject reconstructed from k modes after a similarity
   alignment; the vertex distances (mm, at the subject's own size) are
   reported per k.

Only this builder reads the atlas; the pipeline reads the committed file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from ..bones import LABEL_IDS
from .model_fit import vertex_normals
from .shape_model import MODEL_BONES, MODEL_FILE, ShapeModel, save_model

ATLAS_PREFIX = {"hip_left": ("left", "LeftHip"), "hip_right": ("right", "RightHip"),
                "sacrum": ("sacrum", "Sacrum")}
GPA_ITERATIONS, GPA_TOLERANCE = 100, 1e-10
DEFAULT_MODES = 20
LOO_MODES = (0, 5, 10, 15, 20, 30)
# Acetabulum: femoral head radii considered (mm) and the shell around the
# lunate surface's radius whose vertices, facing the centre, are the cup.
HEAD_RADII_MM = np.arange(18.0, 30.1, 0.5)
CUP_SHELL_MM = 1.5
# S1 endplate: sacral vertices facing up (normal z above this) within this
# distance of the sacrum's top.
ENDPLATE_NORMAL_Z, ENDPLATE_DEPTH_MM = 0.7, 15.0
# The sacrum's caudal end (S3): its last END_DEPTH_MM along the sacrum's
# axis, facing caudally (normal within acos(END_NORMAL_COS) of the axis).
END_DEPTH_MM, END_NORMAL_COS = 8.0, 0.6


def read_vtk_polydata(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3), triangles (F, 3)) of a legacy ASCII VTK polydata file."""
    tokens = Path(path).read_text().split()
    i = tokens.index("POINTS")
    n = int(tokens[i + 1])
    points = np.array(tokens[i + 3:i + 3 + 3 * n], dtype=np.float64).reshape(n, 3)
    j = tokens.index("POLYGONS")
    m = int(tokens[j + 1])
    cells = np.array(tokens[j + 3:j + 3 + 4 * m], dtype=np.int64).reshape(m, 4)
    if not np.all(cells[:, 0] == 3):
        raise ValueError(f"{path}: only triangles are expected")
    return points, cells[:, 1:]


def read_atlas(atlas_dir: Path) -> tuple[list[int], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Subject ids, per bone the (S, V, 3) vertices of every subject, and per bone its triangles."""
    folder = Path(atlas_dir) / "surface"
    first = ATLAS_PREFIX["hip_left"]
    ids = sorted(int(re.search(r"(\d+)_cpd\.vtk$", p.name).group(1))
                 for p in (folder / first[0]).glob(f"{first[1]}*_cpd.vtk"))
    if not ids:
        raise SystemExit(f"{folder}: no atlas surfaces found")
    points, faces = {}, {}
    for bone, (sub, prefix) in ATLAS_PREFIX.items():
        stack = []
        for subject in ids:
            p, f = read_vtk_polydata(folder / sub / f"{prefix}{subject}_cpd.vtk")
            if bone not in faces:
                faces[bone] = f
            elif not np.array_equal(f, faces[bone]):
                raise SystemExit(f"{prefix}{subject}: triangulation differs from the first subject's")
            stack.append(p)
        points[bone] = np.stack(stack)
    return ids, points, faces


def _edge_use(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, inverse, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.ravel()].reshape(3, -1).T, unique[counts == 1]


def close_template(faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """(closed 2-manifold triangles, indices of the vertices kept) of a template.

    Triangles with two or more edges used more than twice are fins and go;
    boundary loops (split where two touch at a vertex) are closed by a fan
    from their first vertex (they are small, nearly planar holes).
    Orientation follows the existing triangles."""
    use, _ = _edge_use(faces)
    faces = faces[(use > 2).sum(axis=1) < 2]
    use, _ = _edge_use(faces)
    if (use > 2).any():
        raise SystemExit("template has non-manifold edges that are not fins")
    # Directed boundary edges: the hole is walked opposite to the triangles' direction.
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    keys = {tuple(e) for e in directed.tolist()}
    outgoing: dict[int, list[int]] = {}
    for a, b in directed.tolist():
        if (b, a) not in keys:
            outgoing.setdefault(b, []).append(a)
    new = []
    while outgoing:
        path = [next(iter(outgoing))]
        while True:
            step = outgoing[path[-1]].pop()
            if not outgoing[path[-1]]:
                del outgoing[path[-1]]
            if step in path:  # a loop closes (at the start, or at a vertex two loops share)
                i = path.index(step)
                loop, path = path[i:], path[:i + 1]
                new += [(loop[0], loop[j], loop[j + 1]) for j in range(1, len(loop) - 1)]
                if len(path) == 1 and path[0] not in outgoing:
                    break
            else:
                path.append(step)
    faces = np.concatenate([faces, np.array(new, dtype=np.int64).reshape(-1, 3)])
    used = np.unique(faces)
    remap = np.full(n_vertices, -1)
    remap[used] = np.arange(len(used))
    return remap[faces], used


def similarity_align(moving: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """(aligned moving, scale, rotation, translation) minimising ||s R m + t - target||."""
    mc, tc = moving.mean(axis=0), target.mean(axis=0)
    m, t = moving - mc, target - tc
    u, sv, vt = np.linalg.svd(m.T @ t)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, 1.0, d])
    rotation = (u @ fix @ vt).T
    scale = float((sv * np.diag(fix)).sum() / (m * m).sum())
    translation = tc - scale * mc @ rotation.T
    return scale * moving @ rotation.T + translation, scale, rotation, translation


def procrustes(shapes: np.ndarray) -> np.ndarray:
    """Generalised Procrustes: shapes (S, N, 3) aligned to their mean, which
    is centred, in the LPS-like orientation of the first shape and at the
    shapes' mean centroid size."""
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    size = np.sqrt((centred ** 2).sum(axis=(1, 2)))
    mean = centred[0] * (size.mean() / size[0])
    aligned = centred
    for _ in range(GPA_ITERATIONS):
        aligned = np.stack([similarity_align(s, mean)[0] for s in centred])
        new_mean = aligned.mean(axis=0)
        new_mean *= size.mean() / np.sqrt((new_mean ** 2).sum())
        # Keep the mean in the first subject's (LPS) orientation, centred.
        new_mean = similarity_align(new_mean, mean)[0]
        change = np.abs(new_mean - mean).max()
        mean = new_mean
        if change < GPA_TOLERANCE * size.mean():
            break
    return np.stack([similarity_align(s, mean)[0] for s in centred])


def pca(aligned: np.ndarray, n_modes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (N, 3), modes (K, N, 3) orthonormal, sd (K,) mm)."""
    mean = aligned.mean(axis=0)
    x = (aligned - mean).reshape(len(aligned), -1)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    k = min(n_modes, len(sv))
    sd = sv[:k] / np.sqrt(len(aligned) - 1)
    return mean, vt[:k].reshape(k, -1, 3), sd


def reconstruct(shape: np.ndarray, mean: np.ndarray, modes: np.ndarray, k: int) -> np.ndarray:
    """``shape`` reconstructed from the first k modes, in its own frame and size."""
    aligned, scale, rotation, translation = similarity_align(shape, mean)
    flat = modes[:k].reshape(k, mean.size)
    b = flat @ (aligned - mean).ravel()
    model = mean + (b @ flat).reshape(mean.shape)
    return ((model - translation) @ rotation) / scale


def acetabulum(vertices: np.ndarray, normals: np.ndarray, bone_index: np.ndarray) -> np.ndarray:
    """Vertex indices of the articular (lunate) surface of one acetabulum.

    The cup's outward normals point at the femoral head's centre: every
    vertex votes for the points one head radius along its normal, and the
    centre is where most votes fall (2 mm bins). The vertices facing it lie
    at two distances: the lunate surface, on the head, and the deeper,
    non-articular fossa; the lunate surface is the most common distance
    (1 mm bins), within ``CUP_SHELL_MM``."""
    v, n = vertices[bone_index], normals[bone_index]
    votes = (v[None] + HEAD_RADII_MM[:, None, None] * n[None]).reshape(-1, 3)
    cells = np.floor(votes / 2.0).astype(np.int64)
    unique, counts = np.unique(cells, axis=0, return_counts=True)
    best = unique[np.argmax(counts)]
    near = np.all(np.abs(cells - best) <= 1, axis=1)
    centre = votes[near].mean(axis=0)
    to_centre = centre - v
    dist = np.linalg.norm(to_centre, axis=1)
    facing = np.einsum("ij,ij->i", n, to_centre) > 0.9 * dist
    counts, edges = np.histogram(dist[facing], bins=np.arange(HEAD_RADII_MM[0], HEAD_RADII_MM[-1] + 1.0, 1.0))
    radius = edges[np.argmax(counts)] + 0.5
    return bone_index[facing & (np.abs(dist - radius) < CUP_SHELL_MM)]


def s1_endplate(vertices: np.ndarray, normals: np.ndarray, bone_index: np.ndarray) -> np.ndarray:
    """Vertex indices of the S1 superior endplate: upward-facing sacral
    vertices near the sacrum's top, on the midline body (not the alae)."""
    v, n = vertices[bone_index], normals[bone_index]
    top = v[:, 2].max()
    up = (n[:, 2] > ENDPLATE_NORMAL_Z) & (v[:, 2] > top - ENDPLATE_DEPTH_MM)
    mid = np.abs(v[:, 0] - v[:, 0].mean()) < 25.0
    return bone_index[up & mid]


def s3_end(vertices: np.ndarray, normals: np.ndarray, bone_index: np.ndarray, endplate: np.ndarray) -> np.ndarray:
    """Vertex indices of the sacrum's caudal end (where the atlas stops, at
    S3): along the axis from the S1 endplate's centre to the sacrum's lowest
    points, the last ``END_DEPTH_MM``, facing that way."""
    v, n = vertices[bone_index], normals[bone_index]
    top = vertices[endplate].mean(axis=0)
    lowest = v[v[:, 2] <= np.percentile(v[:, 2], 5)].mean(axis=0)
    axis = (lowest - top) / np.linalg.norm(lowest - top)
    along = (v - top) @ axis
    return bone_index[(along > along.max() - END_DEPTH_MM) & (n @ axis > END_NORMAL_COS)]


def build(atlas_dir: Path, n_modes: int = DEFAULT_MODES) -> tuple[ShapeModel, np.ndarray]:
    """(model, the training shapes in their own frames (S, N, 3))."""
    ids, points, faces = read_atlas(atlas_dir)
    blocks, offset, joint_faces, vertex_bone = [], 0, {}, []
    for bone in MODEL_BONES:
        closed, used = close_template(faces[bone], points[bone].shape[1])
        blocks.append(points[bone][:, used])
        joint_faces[bone] = closed + offset
        vertex_bone.append(np.full(len(used), LABEL_IDS[bone], dtype=np.uint8))
        offset += len(used)
    shapes = np.concatenate(blocks, axis=1)
    aligned = procrustes(shapes)
    mean, modes, sd = pca(aligned, n_modes)
    vertex_bone = np.concatenate(vertex_bone)
    all_faces = np.concatenate(list(joint_faces.values()))
    normals = vertex_normals(mean, all_faces)
    landmarks = {
        "acetabulum_left": acetabulum(mean, normals, np.flatnonzero(vertex_bone == LABEL_IDS["hip_left"])),
        "acetabulum_right": acetabulum(mean, normals, np.flatnonzero(vertex_bone == LABEL_IDS["hip_right"])),
        "s1_endplate": s1_endplate(mean, normals, np.flatnonzero(vertex_bone == LABEL_IDS["sacrum"])),
    }
    landmarks["s3_end"] = s3_end(mean, normals, np.flatnonzero(vertex_bone == LABEL_IDS["sacrum"]),
                                 landmarks["s1_endplate"])
    model = ShapeModel(mean_mm=mean, modes=modes, sd_mm=sd, faces=joint_faces, vertex_bone=vertex_bone,
                       landmarks=landmarks)
    return model, shapes


def leave_one_out(shapes: np.ndarray, ks: tuple[int, ...] = LOO_MODES) -> dict:
    """Per k: mean and 95th-percentile vertex distance (mm) of left-out subjects."""
    errors = {k: [] for k in ks}
    for s in range(len(shapes)):
        rest = np.delete(shapes, s, axis=0)
        mean, modes, _ = pca(procrustes(rest), max(ks))
        for k in ks:
            errors[k].append(np.linalg.norm(reconstruct(shapes[s], mean, modes, k) - shapes[s], axis=1))
    return {k: {"mean_mm": float(np.mean(e)), "p95_mm": float(np.percentile(np.concatenate(e), 95))}
            for k, e in errors.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.segment.build_shape_model",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("atlas_dir", type=Path, help="the JHU pelvis atlas folder (holding surface/)")
    parser.add_argument("--out", type=Path, default=MODEL_FILE, help="model file to write")
    parser.add_argument("--modes", type=int, default=DEFAULT_MODES, help="modes kept")
    args = parser.parse_args(argv)
    model, shapes = build(args.atlas_dir, args.modes)
    aligned = procrustes(shapes)
    variance = np.cumsum(model.sd_mm ** 2) / ((aligned - aligned.mean(axis=0)) ** 2).sum() * (len(aligned) - 1)
    loo = leave_one_out(shapes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.out, model)
    print(f"{args.out}: {len(model.mean_mm)} vertices, {model.n_modes} modes, "
          f"{args.out.stat().st_size / 1e6:.2f} MB")
    print("variance explained by 5 / 10 / 20 modes: "
          + " / ".join(f"{100 * variance[k - 1]:.0f} %" for k in (5, 10, 20) if k <= model.n_modes))
    print("landmarks: " + ", ".join(f"{n} {len(v)} vertices" for n, v in model.landmarks.items()))
    print("leave-one-out vertex distance (mm), modes: mean / 95th percentile")
    for k, row in loo.items():
        print(f"  {k:2d}: {row['mean_mm']:.2f} / {row['p95_mm']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
