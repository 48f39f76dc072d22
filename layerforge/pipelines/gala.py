"""The ``gala`` pipeline: GALA, one clothed scan to canonical, re-posable body and object layers.

    normalise    -> the scan and its body fit read (SMPL-X, anny or the built-in body), the scan
                    moved into GALA's frame (the fit's translation and scale removed, +Z up), a
                    SceneFrame kept for export; a scan far from its posed body is an error
    segment      -> 36 views (3 elevations x 12 azimuths) of the scan, one object mask each (a
                    text-prompted segmenter, or known labels), a face is object when segmented
                    in >= half the views that see it
    canonicalise -> the canonical pose (legs spread 15 degrees), the scan brought there by
                    inverse LBS with weights from the nearest posed body vertices
    geometry     -> two DMTet layers (human, object) on our generated tet grid, initialised to
                    the canonical body, fitted by GALA's segmentation, normal / mask
                    reconstruction and body-overlap losses in posed space, plus pose-guided
                    ControlNet SDS in canonical space when a prior is configured
    texture      -> a colour field per layer on the fixed canonical meshes, fitted to the scan's
                    colours on each layer's segmented pixels, baked into UV maps
    layers       -> the layers with skinning from the body, re-posed to the scan pose, to any
                    extra fit, and the object composed onto another body
    export       -> a skinned glTF (one armature, body and object skinned to it), USD with
                    UsdSkel, .blend with an armature, canonical and posed OBJ; previews

The math lives in :mod:`layerforge.models.gala` and :mod:`layerforge.models.body`; this module
only wires stages.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from layerforge.assets.types import Mesh
from layerforge.errors import InputError
from layerforge.pipelines.context import StageContext
from layerforge.pipelines.gala_config import (
    BodyConfig,
    CanonicaliseConfig,
    GeometryConfig,
    LayersConfig,
    NormaliseConfig,
    SegmentConfig,
    TextureConfig,
)
from layerforge.pipelines.schema import ExportConfig
from layerforge.pipelines.stage import INPUT, Stage

log = logging.getLogger("layerforge")
SCAN_SUFFIXES = (".obj", ".glb", ".gltf", ".ply")
FIT_NAMES = ("smplx_param.pkl", "smplx_param.npz", "smplx_param.json")
BODY_FILE = "body_model.npz"
TRUTH_FILE = "truth.npz"
SKELETON = "body_rig"


# ---- inputs ---------------------------------------------------------------------------------
def scan_and_fit(src: Path, fit: str | None) -> tuple[Path, Path]:
    """The scan file and its fit: ``src`` is the scan or a folder holding one (THuman layout)."""
    if src.is_dir():
        scans = sorted(p for p in src.iterdir() if p.suffix.lower() in SCAN_SUFFIXES and not p.name.startswith("."))
        if len(scans) != 1:
            raise InputError(f"{src} holds {len(scans)} scans ({', '.join(p.name for p in scans) or 'none'})",
                             "pass input=<the scan file> or a folder with exactly one .obj/.glb/.ply")
        scan = scans[0]
    else:
        scan = src
    if fit is not None:
        fit_path = Path(fit).expanduser()
        if not fit_path.is_file():
            raise InputError(f"normalise.fit={fit} does not exist", "pass the body fit file (.pkl/.npz/.json)")
        return scan, fit_path.resolve()
    near = [scan.parent / n for n in FIT_NAMES] + sorted(scan.parent.glob(f"{scan.stem}*fit*.*"))
    found = [p for p in near if p.is_file()]
    if not found:
        raise InputError(f"no body fit next to {scan.name} (looked for {', '.join(FIT_NAMES)})",
                         "pass normalise.fit=<smplx_param.pkl|.npz|.json>")
    return scan, found[0]


def load_body(cfg: BodyConfig, scan: Path):
    """The body model: ``body.model`` (an SMPL-X file, or ``anny``); unset: ``body_model.npz``
    beside the scan, else the open anny body (whose fits give one ``pose`` of its 104 joints)."""
    from layerforge.models.body import load_smplx

    path = Path(cfg.model).expanduser() if cfg.model and cfg.model != "anny" else scan.parent / BODY_FILE
    if cfg.model == "anny" or (not cfg.model and not path.is_file()):
        try:
            from layerforge.models.body.anny import load_anny

            model = load_anny()
        except ImportError:
            raise InputError("no body model given and anny is not installed",
                             "set body.model=<SMPLX_NEUTRAL.npz|.pkl> (your SMPL-X download) or run `make` "
                             "(it installs the open anny body)") from None
        if not cfg.model:
            log.info("gala: no body.model given: the open anny body (set body.model=<SMPL-X file> for SMPL-X fits)")
        return model
    if not path.is_file():
        raise InputError(f"body.model={cfg.model} does not exist",
                         "pass your SMPLX_NEUTRAL.npz/.pkl (SMPL-X is non-commercial: download it from smpl-x.is.tue.mpg.de)")
    return load_smplx(path, num_betas=cfg.num_betas, num_expression=cfg.num_expression)


def _fit_pose(model, fit) -> tuple[torch.Tensor, torch.Tensor]:
    betas = torch.as_tensor(np.asarray(fit.betas), dtype=torch.float32)
    return betas, torch.as_tensor(np.asarray(fit.full_pose(model)), dtype=torch.float32)


def _rotation(model) -> np.ndarray:
    return np.asarray(torch.as_tensor(model.to_world)[:3, :3], np.float64)


# ---- normalise ------------------------------------------------------------------------------
def normalise(ctx: StageContext) -> None:
    from scipy.spatial import cKDTree

    from layerforge.assets.frame import SceneFrame
    from layerforge.assets.mesh_io import read_mesh
    from layerforge.models.body import read_fit
    from layerforge.models.gala.canonical import pose_body

    cfg: NormaliseConfig = ctx.typed("normalise")
    bcfg: BodyConfig = ctx.typed("body")
    scan_path, fit_path = scan_and_fit(ctx.input(INPUT), cfg.fit)
    model = load_body(bcfg, scan_path)
    try:
        fit = read_fit(fit_path, model, flat_hand_mean=bcfg.flat_hand_mean)
    except InputError as err:
        if bcfg.model or not model.name.startswith("anny"):
            raise
        raise InputError(f"no body model given, and the open anny body cannot read {fit_path.name} ({err.problem})",
                         "for an SMPL-X fit set body.model=<SMPLX_NEUTRAL.npz|.pkl> (your SMPL-X download)") from None
    scan = read_mesh(scan_path, up_axis=str(ctx.cfg.get("input_up_axis", "auto")))
    if scan.colors is None and (scan.material is None or scan.material.base_color_texture is None or scan.uvs is None):
        raise InputError(f"{scan_path.name} has no texture and no vertex colours",
                         "export the scan with its texture (OBJ: mtllib + map_Kd, glTF: baseColorTexture)")
    r = _rotation(model)
    scale = float(np.asarray(fit.scale).reshape(-1)[0])
    transl = r @ np.asarray(fit.transl, np.float64).reshape(3)
    verts = (scan.vertices.astype(np.float64) - transl) / scale
    betas, pose = _fit_pose(model, fit)
    body = pose_body(model, betas, pose)
    d, _ = cKDTree(body.vertices.double().numpy()).query(verts)
    median = float(np.median(d))
    if median > cfg.max_scan_distance:
        raise InputError(f"{scan_path.name} lies {median:.3f} m (median) from its posed body fit {fit_path.name}",
                         "check that the fit belongs to this scan and the scan's up axis (input_up_axis=Y|Z)")
    log.info("gala: scan %s, %d faces, median %.1f mm from the posed body", scan_path.name, len(scan.faces), 1e3 * median)
    ctx.save("scan", Mesh(verts.astype(np.float32), scan.faces, None, scan.uvs, scan.colors, scan.material))
    ctx.save("body", {"betas": betas.numpy(), "pose": pose.numpy(), "vertices": body.vertices.numpy(),
                      "scale": np.float32(scale), "transl": transl.astype(np.float32)})
    to_world = np.eye(4)
    to_world[:3, :3] *= scale
    to_world[:3, 3] = transl
    ctx.save("frame", SceneFrame(to_world))


def _model(ctx: StageContext):
    scan, _ = scan_and_fit(ctx.input(INPUT), ctx.typed("normalise").fit)
    return load_body(ctx.typed("body"), scan), scan


def _posed(model, body: dict):
    from layerforge.models.gala.canonical import pose_body

    return pose_body(model, torch.from_numpy(np.asarray(body["betas"])), torch.from_numpy(np.asarray(body["pose"])))


def _scan_colours(scan) -> dict:
    if scan.colors is not None:
        return {"vertex_colors": torch.from_numpy(scan.colors[:, :3]).float()}
    return {"uv": torch.from_numpy(scan.uvs).float(), "texture": torch.from_numpy(scan.material.base_color_texture[..., :3]).float()}


# ---- segment --------------------------------------------------------------------------------
def _segmenter(ctx: StageContext, cfg: SegmentConfig, scan_path: Path, num_faces: int):
    from layerforge.models.gala.segmentation import ModelSegmenter, OracleSegmenter

    if cfg.uses_model():
        from layerforge.models.guidance.text_segmenter import TextSegmenter

        return ModelSegmenter(TextSegmenter({"detector_name_or_path": cfg.detector, "sam_name_or_path": cfg.sam,
                                             "clipseg_name_or_path": cfg.clipseg, "box_threshold": cfg.box_threshold,
                                             "text_threshold": cfg.text_threshold, "device": str(ctx.device)}))
    labels = cfg.labels or ("truth" if (scan_path.parent / TRUTH_FILE).is_file() else None)
    if labels is None:
        raise InputError("segment has no segmenter", "set segment.detector + segment.sam (Grounded-SAM) or "
                         "segment.clipseg to model folders, or segment.labels=<faces.npy>")
    path = scan_path.parent / TRUTH_FILE if labels == "truth" else Path(labels).expanduser()
    try:
        arr = np.load(path)
        arr = arr["face_is_object"] if labels == "truth" else arr
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"segment.labels: cannot read {path} ({err})", "pass a .npy of one bool per scan face") from None
    if arr.shape != (num_faces,):
        raise InputError(f"segment.labels {path.name} has {arr.shape} labels for {num_faces} faces",
                         "give one bool per scan face, in the scan's face order")
    log.info("gala: segmenting with known face labels (%s)", path.name)
    return OracleSegmenter(torch.from_numpy(arr.astype(bool)))


def segment(ctx: StageContext) -> None:
    from layerforge.models.gala.segmentation import (
        fill_unseen,
        remove_small_components,
        segmentation_cameras,
        vote_faces,
    )
    from layerforge.renderers.mesh import render_mesh

    cfg: SegmentConfig = ctx.typed("segment")
    obj_word = str(ctx.cfg.get("object") or "jacket")
    scan_path, _ = scan_and_fit(ctx.input(INPUT), ctx.typed("normalise").fit)
    scan = ctx.load("scan", Mesh)
    seg = _segmenter(ctx, cfg, scan_path, len(scan.faces))
    v = torch.from_numpy(scan.vertices).float()
    f = torch.from_numpy(scan.faces).long()
    lo, hi = v.min(0).values, v.max(0).values
    center, radius = (lo + hi) / 2, float((hi - lo).norm() / 2)
    kw = {"fov_deg": cfg.fov_deg, "elevations_deg": tuple(cfg.elevations_deg), "azimuths": cfg.azimuths}
    cams = segmentation_cameras(center, radius, cfg.resolution, **kw)
    fine = segmentation_cameras(center, radius, cfg.vote_resolution, **kw)
    colours = _scan_colours(scan)
    face_ids, masks, images, small_masks = [], [], [], []
    with torch.no_grad():
        for i in ctx.progress(range(len(cams)), desc="segment views"):
            out = render_mesh(v, f, cams[i], **colours)
            m = seg(out.rgb, out.extras["face_id"], obj_word)
            ids = render_mesh(v, f, fine[i], antialias_edges=False).extras["face_id"]
            up = torch.nn.functional.interpolate(m[:, None].float(), size=ids.shape[-2:], mode="nearest")[:, 0] > 0.5
            face_ids.append(ids[0])
            masks.append(up[0])
            images.append(out.rgb[0])
            small_masks.append(m[0])
    face_ids, masks = torch.stack(face_ids), torch.stack(masks)
    vote = vote_faces(face_ids, masks, len(f), cfg.threshold)
    lab = remove_small_components(scan.faces, vote.is_object.numpy(), cfg.min_component_faces)
    if cfg.fill_unseen:
        lab = fill_unseen(scan.faces, lab, vote.unseen.numpy())
    if not lab.any():
        raise InputError(f"no scan face was segmented as {obj_word!r} in >= {cfg.threshold:.0%} of its views",
                         "check object=<word> and the segmenter (segment.*), or lower segment.threshold")
    log.info("gala: %d of %d faces are %s (%d never seen)", int(lab.sum()), len(lab), obj_word, int(vote.unseen.sum()))
    ctx.save("segmentation", {"face_is_object": lab, "visible": vote.visible.numpy(), "segmented": vote.segmented.numpy()})
    _vote_preview(ctx, torch.stack(images), torch.stack(small_masks), cfg.azimuths)


def _vote_preview(ctx: StageContext, images: torch.Tensor, masks: torch.Tensor, columns: int) -> None:
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import texture_to_png

    tint = torch.tensor([1.0, 0.2, 0.2])
    img = torch.where(masks[..., None], 0.5 * images + 0.5 * tint, images)
    step = max(1, img.shape[1] // 96)
    img = img[:, ::step, ::step]
    rows = [torch.cat(list(img[r * columns:(r + 1) * columns]), 1) for r in range(len(img) // columns)]
    atomic_write_bytes(ctx.preview_path("segment_vote.png"), texture_to_png(torch.cat(rows, 0).numpy(), srgb=True))


# ---- canonicalise ---------------------------------------------------------------------------
def _space(model, cfg: CanonicaliseConfig):
    from layerforge.models.gala.canonical import CanonicalSpace

    return CanonicalSpace(model, cfg.leg_deg, cfg.neighbours)


def canonicalise(ctx: StageContext) -> None:
    cfg: CanonicaliseConfig = ctx.typed("canonicalise")
    model, _ = _model(ctx)
    space = _space(model, cfg)
    scan = ctx.load("scan", Mesh)
    posed = _posed(model, ctx.load("body"))
    canon = space.to_canonical(torch.from_numpy(scan.vertices).float(), posed)
    kp = space.body.keypoints[list(model.openpose18)] if model.openpose18 is not None else space.body.joints[:18]
    ctx.save("canonical", {"scan_vertices": canon.numpy(), "body_vertices": space.body.vertices.numpy(),
                           "keypoints": space.body.keypoints.numpy(), "openpose": kp.numpy()})
    _mesh_preview(ctx, "canonical_scan.png", [canon], [torch.from_numpy(scan.faces)])


def _mesh_preview(ctx: StageContext, name: str, verts: list[torch.Tensor], faces: list[torch.Tensor],
                  colours: list[tuple[float, float, float]] | None = None, size: int = 192) -> None:
    """Front | side | back renders of meshes side by side."""
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import texture_to_png
    from layerforge.renderers.cameras import orbit_cameras
    from layerforge.renderers.mesh import render_mesh

    allv = torch.cat(verts)
    lo, hi = allv.min(0).values, allv.max(0).values
    radius = float((hi - lo).norm() / 2)
    cams = orbit_cameras([10.0] * 3, [-90.0, 0.0, 90.0], radius * 1.1 / np.sin(np.deg2rad(20)), 40.0, size, size,
                         target=(lo + hi) / 2)
    palette = colours or [(0.8, 0.8, 0.8), (0.25, 0.4, 0.8), (0.8, 0.5, 0.3)]
    cols = torch.cat([torch.tensor(palette[i % len(palette)]).expand(len(v), 3) for i, v in enumerate(verts)])
    offs = np.cumsum([0] + [len(v) for v in verts[:-1]])
    allf = torch.cat([f.long() + int(o) for f, o in zip(faces, offs)])
    with torch.no_grad():
        rgb = render_mesh(allv.float(), allf, cams, vertex_colors=cols, background=1.0).rgb
    atomic_write_bytes(ctx.preview_path(name), texture_to_png(torch.cat(list(rgb), 1).numpy(), srgb=True))


# ---- geometry -------------------------------------------------------------------------------
def _bounds(points: list[torch.Tensor], margin: float) -> torch.Tensor:
    allp = torch.cat(points)
    return torch.stack([allp.min(0).values - margin, allp.max(0).values + margin])


def _guidance(cfg: GeometryConfig, device, texture: bool = False):
    """The ControlNet-OpenPose SDS of the geometry (normal + mask latent) or texture stage (RGB)."""
    if not cfg.prior_model:
        return None
    from layerforge.models.guidance.controlnet import ControlNetSDSGuidance
    from layerforge.pipelines.registry import guidance_options

    name = "sd15_controlnet_openpose_texture" if texture else "sd15_controlnet_openpose"
    merged = guidance_options(name, cfg.prior)
    merged.update({"pretrained_model_name_or_path": cfg.prior_model, "controlnet_name_or_path": cfg.controlnet,
                   "device": str(device)})
    if not texture:
        merged["latent_mode"] = "direct"
    return ControlNetSDSGuidance(merged)


def geometry(ctx: StageContext) -> None:
    from layerforge.assets.types import LayeredAsset, Part
    from layerforge.models.gala.batches import GalaBatches
    from layerforge.models.gala.losses import InitSDFLoss, gala_terms, init_sdf_samples
    from layerforge.models.gala.model import LAYERS, GalaLayers
    from layerforge.models.gala.views import body_foci
    from layerforge.models.optimisation import ParamGroup
    from layerforge.pipelines.optimise import OptimiseConfig, optimise

    cfg: GeometryConfig = ctx.typed("geometry")
    model, _ = _model(ctx)
    space = _space(model, ctx.typed("canonicalise"))
    scan = ctx.load("scan", Mesh)
    canon = ctx.load("canonical")
    lab = torch.from_numpy(np.asarray(ctx.load("segmentation")["face_is_object"], bool))
    target = _posed(model, ctx.load("body"))
    canon_scan = torch.from_numpy(canon["scan_vertices"]).float()
    bounds = _bounds([space.body.vertices, canon_scan], cfg.grid_margin)
    layers = GalaLayers(bounds, cfg.dmtet(), space, target, seed=ctx.seed).to(ctx.device)
    gen = torch.Generator().manual_seed(ctx.seed)
    pts, sdf = init_sdf_samples(space.body.vertices, model.faces, bounds, gen)
    init = cfg.init_steps
    on = (lambda w: [init, 0.0, float(w), init]) if init else (lambda w: float(w))
    terms = [t for t in gala_terms({}, _guidance(cfg, ctx.device),
                                   {"human": cfg.prompt_human,
                                    "object": cfg.prompt_object.format(object=ctx.cfg.get("object") or "jacket")},
                                   take_turns=cfg.take_turns)]
    from layerforge.models.gala.losses import PAPER_WEIGHTS

    weights = {**PAPER_WEIGHTS, **cfg.weights}
    for t in terms:
        t.weight = on(weights[t.name])
    terms = [t for t in terms if weights[t.name]]
    if init:
        terms.insert(0, InitSDFLoss(pts, sdf, cfg.init_points, weight=[init, 1.0, 0.0, init]))
    scan_v = torch.from_numpy(scan.vertices).float()
    scan_f = torch.from_numpy(scan.faces).long()
    kp = target.keypoints
    names = list(model.joint_names)
    sampler = GalaBatches(
        scan_v, scan_f, lab, target.vertices, model.faces, torch.from_numpy(canon["openpose"]),
        body_foci(target.vertices, kp, names, scan_v[scan_f[lab].reshape(-1)]),
        body_foci(space.body.vertices, space.body.keypoints, names, canon_scan[scan_f[lab].reshape(-1)]),
        cfg.views_per_step, cfg.resolution, cfg.sds_resolution, cfg.close_up_probability, device=ctx.device,
        render_from=init)
    lr = [init, cfg.lr, cfg.lr_fit, init] if init else cfg.lr_fit
    groups = [ParamGroup(n, list(layers.layer(n).parameters()), lr=lr) for n in LAYERS]

    def preview(step: int) -> None:
        with torch.no_grad():
            m = layers.meshes()
        if all(len(m.faces[n]) for n in LAYERS):
            _mesh_preview(ctx, f"geometry_{step:06d}.png", [m.canonical[n].cpu() for n in LAYERS],
                          [m.faces[n].cpu() for n in LAYERS])

    optimise(ctx, layers, groups, terms, sampler, OptimiseConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every),
             preview=preview, desc="geometry")
    ctx.save("model", layers)
    with torch.no_grad():
        m = layers.meshes()
    for n in LAYERS:
        if not len(m.faces[n]):
            raise InputError(f"the {n} layer came out empty", "raise geometry.steps or lower the learning rate, then re-run")
    ctx.save("geometry", LayeredAsset("canonical", [Part(n, Mesh(m.canonical[n].cpu().numpy(), m.faces[n].cpu().numpy()))
                                                    for n in LAYERS]))


# ---- texture --------------------------------------------------------------------------------
def _layer_meshes(asset) -> dict:
    return {p.name: p.geometry for p in asset.parts}


def texture(ctx: StageContext) -> None:
    from layerforge.assets.types import LayeredAsset, Part
    from layerforge.models.dp_recon.texture import textured_mesh
    from layerforge.models.gala.batches import ScanColourBatches
    from layerforge.models.gala.losses import TextureReconLoss, TextureSDSLoss
    from layerforge.models.gala.model import LAYERS, TexturedLayers
    from layerforge.models.gala.views import body_foci
    from layerforge.models.optimisation import ParamGroup
    from layerforge.pipelines.optimise import OptimiseConfig, optimise

    cfg: TextureConfig = ctx.typed("texture")
    model, _ = _model(ctx)
    space = _space(model, ctx.typed("canonicalise"))
    target = _posed(model, ctx.load("body"))
    meshes = _layer_meshes(ctx.load("geometry"))
    scan = ctx.load("scan", Mesh)
    lab = torch.from_numpy(np.asarray(ctx.load("segmentation")["face_is_object"], bool))
    can = {n: torch.from_numpy(meshes[n].vertices).float() for n in LAYERS}
    faces = {n: torch.from_numpy(meshes[n].faces).long() for n in LAYERS}
    with torch.no_grad():
        posed = {n: space.to_posed(can[n], target) for n in LAYERS}
    bounds = _bounds(list(can.values()), 0.02)
    layers = TexturedLayers(can, posed, faces, bounds).to(ctx.device)
    colours = _scan_colours(scan)
    colours = {"colours": colours["vertex_colors"]} if "vertex_colors" in colours else colours
    scan_v = torch.from_numpy(scan.vertices).float()
    gcfg: GeometryConfig = ctx.typed("geometry")
    guidance = _guidance(gcfg, ctx.device, texture=True)
    names = list(model.joint_names)
    canon = ctx.load("canonical")
    sampler = ScanColourBatches(scan_v, torch.from_numpy(scan.faces), colours, lab,
                                body_foci(target.vertices, target.keypoints, names, None),
                                cfg.views_per_step, cfg.resolution, gcfg.close_up_probability, device=ctx.device,
                                canonical_foci=body_foci(space.body.vertices, space.body.keypoints, names, None)
                                if guidance is not None else None,
                                keypoints=torch.from_numpy(canon["openpose"]), sds_resolution=gcfg.sds_resolution)
    terms = [TextureReconLoss(cfg.weight_rgb)]
    if guidance is not None and cfg.weight_sds:
        obj_word = str(ctx.cfg.get("object") or "jacket")
        terms.append(TextureSDSLoss(guidance, gcfg.prompt_object.format(object=obj_word), cfg.weight_sds))
    groups = [ParamGroup(f"{n}_grid", list(layers.fields[n].encoding.parameters()), lr=cfg.lr) for n in LAYERS] + \
             [ParamGroup(f"{n}_mlp", list(layers.fields[n].mlp.parameters()), lr=cfg.lr) for n in LAYERS]
    optimise(ctx, layers, groups, terms, sampler,
             OptimiseConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every), desc="texture")
    layers.eval()

    parts = []
    with torch.no_grad():
        for n in LAYERS:
            field = layers.fields[n].cpu()
            parts.append(Part(n, textured_mesh(field, Mesh(meshes[n].vertices, meshes[n].faces), cfg.texture_size,
                                               name=f"{n}_material")))
    ctx.save("textured", LayeredAsset("canonical", parts))


# ---- layers ---------------------------------------------------------------------------------
def _skin(space, vertices: np.ndarray, model, bind: np.ndarray, skeleton: str = SKELETON):
    """glTF-style skin (top-4 weights, normalised) of canonical ``vertices`` bound at ``bind`` [J, 4, 4]."""
    from layerforge.assets.types import Skin

    w = space.skinning(torch.from_numpy(vertices).float()).weights.numpy()
    top = np.argsort(-w, axis=1)[:, :4]
    tw = np.take_along_axis(w, top, 1)
    tw = tw / np.maximum(tw.sum(1, keepdims=True), 1e-12)
    return Skin(joint_names=list(model.joint_names), parents=model.parents.numpy(),
                inverse_bind_matrices=np.linalg.inv(bind).astype(np.float32), joints=top, weights=tw.astype(np.float32),
                skeleton=skeleton)


def rig_frame(space, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The rig's frame: canonical space at the fit's scale, feet on z = 0, pelvis over the origin.

    Returns (``to_rig`` [4, 4] similarity applied to canonical points, ``bind`` [J, 4, 4] the
    joints' rig-space transforms at the canonical pose: rotations as posed, positions mapped).
    """
    v = space.body.vertices.double().numpy()
    pelvis = space.body.joints[0].double().numpy()
    lift = np.array([-pelvis[0] * scale, -pelvis[1] * scale, -v[:, 2].min() * scale])
    to_rig = np.eye(4)
    to_rig[:3, :3] *= scale
    to_rig[:3, 3] = lift
    a = space.body.transforms.double().numpy()
    rest = space.model.rest_joints()[0].double().numpy() @ _rotation(space.model).T
    bind = np.tile(np.eye(4), (len(a), 1, 1))
    bind[:, :3, :3] = a[:, :3, :3]
    g_t = (a[:, :3, :3] @ rest[..., None])[..., 0] + a[:, :3, 3]  # joint positions at the canonical pose
    bind[:, :3, 3] = g_t * scale + lift
    return to_rig, bind


def layers(ctx: StageContext) -> None:
    from layerforge.assets.types import LayeredAsset, Part
    from layerforge.models.body import read_fit
    from layerforge.models.gala.canonical import pose_body
    from layerforge.models.gala.model import LAYERS

    cfg: LayersConfig = ctx.typed("layers")
    model, _ = _model(ctx)
    space = _space(model, ctx.typed("canonicalise"))
    body = ctx.load("body")
    frame = ctx.load("frame")
    obj_word = str(ctx.cfg.get("object") or "jacket")
    names = {"human": "body", "object": obj_word}
    meshes = _layer_meshes(ctx.load("textured"))
    scale = float(body["scale"])
    to_rig, bind = rig_frame(space, scale)
    rig = []
    for n in LAYERS:
        m = meshes[n]
        skin = _skin(space, m.vertices, model, bind)
        rig.append(Part(names[n], m.transformed(to_rig), layer=names[n], skin=skin))
    ctx.save("rig", LayeredAsset("avatar", rig, metadata={"method": "GALA", "frame": "canonical (rig)"}))

    def posed_asset(name: str, pose_body_, world: np.ndarray, parts=LAYERS, extra=()) -> LayeredAsset:
        out = []
        for n in parts:
            m = meshes[n]
            with torch.no_grad():
                v = space.to_posed(torch.from_numpy(m.vertices).float(), pose_body_).numpy()
            out.append(Part(names[n], Mesh(v, m.faces, None, m.uvs, None, m.material).transformed(world), layer=names[n]))
        out.extend(extra)
        return LayeredAsset(name, out, metadata={"method": "GALA"})

    target = _posed(model, body)
    ctx.save("posed", posed_asset("posed", target, frame.to_world))
    extra = {}
    for i, path in enumerate(cfg.poses):
        fit = read_fit(Path(path).expanduser(), model)
        b, p = _fit_pose(model, fit)
        world = np.eye(4)
        world[:3, :3] *= float(np.asarray(fit.scale).reshape(-1)[0])
        world[:3, 3] = _rotation(model) @ np.asarray(fit.transl, np.float64).reshape(3)
        extra[f"pose_{i:02d}"] = posed_asset(f"pose_{i:02d}", pose_body(model, b, p), world)
    if cfg.compose_fit:
        fit = read_fit(Path(cfg.compose_fit).expanduser(), model)
        b, p = _fit_pose(model, fit)
        other = pose_body(model, b, p)
        body_part = Part("other_body", Mesh(other.vertices.numpy(), model.faces.numpy()), layer="body")
        extra["composed"] = posed_asset("composed", other, np.eye(4), parts=("object",), extra=(body_part,))
    ctx.save("reposed", _pack(extra))


def _pack(assets: dict) -> dict:
    """Extra posed assets as arrays (one artifact): ``<asset>/<part>/{vertices, faces}``."""
    out = {}
    for name, asset in assets.items():
        for p in asset.parts:
            out[f"{name}/{p.name}/vertices"] = p.geometry.vertices
            out[f"{name}/{p.name}/faces"] = p.geometry.faces
    return out


# ---- export ---------------------------------------------------------------------------------
def export(ctx: StageContext) -> None:
    from layerforge.assets.export import export_asset
    from layerforge.assets.frame import SCENE_FRAME_FILE, SceneFrame
    from layerforge.assets.types import LayeredAsset, Part

    cfg: ExportConfig = ctx.typed("export")
    rig = ctx.load("rig")
    posed = ctx.load("posed")
    staged = ctx.folder / "staged"
    export_asset(rig, staged, "avatar", formats=[f for f in cfg.formats if f in ("glb", "usd", "blend")])
    plain = LayeredAsset("canonical", [Part(p.name, p.geometry, p.transform, p.layer) for p in rig.parts])
    export_asset(plain, staged / "canonical", "canonical", formats=["obj"])
    export_asset(posed, staged / "posed", "posed", formats=[f for f in cfg.formats if f in ("glb", "obj")])
    reposed = ctx.load("reposed")
    groups: dict[str, list[Part]] = {}
    for key in sorted(reposed):
        if key.endswith("/vertices"):
            asset, part, _ = key.split("/")
            groups.setdefault(asset, []).append(Part(part, Mesh(reposed[key], reposed[f"{asset}/{part}/faces"]), layer=part))
    for asset, parts in groups.items():
        export_asset(LayeredAsset(asset, parts), staged / asset, asset, formats=["obj", "glb"])
    SceneFrame().save(staged / SCENE_FRAME_FILE)  # posed deliverables are in the scan's world; the rig is canonical
    ctx.publish(staged)
    _layer_previews(ctx, rig, posed, cfg.preview_size, int(ctx.typed("layers").turntable_frames))


def _layer_previews(ctx: StageContext, rig, posed, size: int, frames: int) -> None:
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import frames_to_gif
    from layerforge.renderers.cameras import orbit_cameras
    from layerforge.renderers.mesh import render_textured_parts

    for asset, name in ((rig, "canonical_layers"), (posed, "reposed")):
        verts = [torch.from_numpy(p.geometry.transformed(p.transform).vertices).float() for p in asset.parts]
        allv = torch.cat(verts)
        lo, hi = allv.min(0).values, allv.max(0).values
        radius = float((hi - lo).norm() / 2)
        az = torch.linspace(-90.0, 270.0, frames + 1)[:-1]
        cams = orbit_cameras(torch.full_like(az, 10.0), az, radius * 1.1 / np.sin(np.deg2rad(20)), 40.0, size, size,
                             target=(lo + hi) / 2)
        with torch.no_grad():
            out = render_textured_parts(verts, [torch.from_numpy(p.geometry.faces) for p in asset.parts],
                                        [torch.from_numpy(p.geometry.uvs) for p in asset.parts],
                                        [torch.from_numpy(p.geometry.material.base_color_texture[..., :3]) for p in asset.parts],
                                        cams, background=1.0)
        from layerforge.assets.types import texture_to_png

        atomic_write_bytes(ctx.preview_path(f"{name}.png"), texture_to_png(torch.cat(list(out.rgb[:: max(1, frames // 4)]), 1).numpy(), srgb=True))
        atomic_write_bytes(ctx.preview_path(f"{name}_turntable.gif"),
                           frames_to_gif((np.clip(out.rgb.numpy(), 0, 1) ** (1 / 2.2) * 255).astype(np.uint8), 80))


_BODY = {"body": BodyConfig, "normalise": NormaliseConfig}
STAGES = {
    "normalise": Stage("normalise", normalise, needs=(INPUT,), makes=("scan", "body", "frame"),
                       config_keys=("body", "normalise", "input_up_axis"), schemas=_BODY,
                       description="read the scan and its body fit, move them into GALA's frame"),
    "segment": Stage("segment", segment, needs=(INPUT, "scan"), makes=("segmentation",),
                     config_keys=("object", "segment"), schemas={**_BODY, "segment": SegmentConfig},
                     description="36 views, an object mask each, a face vote"),
    "canonicalise": Stage("canonicalise", canonicalise, needs=(INPUT, "scan", "body"), makes=("canonical",),
                          config_keys=("canonicalise",), schemas={**_BODY, "canonicalise": CanonicaliseConfig},
                          description="the canonical pose; the scan there by inverse LBS"),
    "geometry": Stage("geometry", geometry, needs=(INPUT, "scan", "body", "segmentation", "canonical"),
                      makes=("model", "geometry"), config_keys=("object", "geometry"),
                      schemas={**_BODY, "canonicalise": CanonicaliseConfig, "geometry": GeometryConfig},
                      description="two DMTet layers fitted to the scan (+ pose-guided SDS)"),
    "texture": Stage("texture", texture, needs=(INPUT, "scan", "body", "segmentation", "canonical", "geometry"),
                     makes=("textured",), config_keys=("object", "texture"),
                     schemas={**_BODY, "canonicalise": CanonicaliseConfig, "geometry": GeometryConfig,
                              "texture": TextureConfig},
                     description="a colour field per layer, baked into UV maps"),
    "layers": Stage("layers", layers, needs=(INPUT, "body", "frame", "textured"), makes=("rig", "posed", "reposed"),
                    config_keys=("object", "layers"), schemas={**_BODY, "canonicalise": CanonicaliseConfig,
                                                              "layers": LayersConfig},
                    description="skinned layers; re-posed and composed"),
    "export": Stage("export", export, needs=("rig", "posed", "reposed"), makes=(), config_keys=("export",),
                    schemas={"export": ExportConfig, "layers": LayersConfig},
                    description="skinned GLB / USD / .blend, canonical and posed OBJ, previews"),
}
