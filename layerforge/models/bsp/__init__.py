"""BSP-Net (Chen, Tagliasacchi, Zhang, CVPR 2020): the model side.

- ``data``: normalise, GWN voxelisation at 64^3, IM-NET-style point/value sampling.
- ``network``: :class:`BSPNet` (voxel encoder or per-shape codes) and its CSG layers.
- ``losses``: phase 0..4 losses as dicts of named terms.
- ``training``: ``make_optimizer``, ``train_step``, batch helpers (no loop, no I/O).
- ``extract``: exact convex polyhedra from the planes, convex selection, union sampling.

Generic metrics (Chamfer, normal consistency, edge Chamfer) live in ``layerforge.models.metrics``.
"""
