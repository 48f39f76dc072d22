"""Deep Marching Tetrahedra (DMTet, Shen et al. 2021) for the GALA pipeline.

- :mod:`.grid`: a generated, conforming tetrahedral grid (Kuhn subdivision of a cube lattice)
  and its edge/face helpers.
- :mod:`.marching`: differentiable marching tetrahedra and nvdiffrec's SDF sign regulariser.
- :mod:`.geometry`: :class:`DMTetGeometry`, hash-grid SDF + deformation networks on the grid.
"""

from .geometry import DMTetConfig, DMTetGeometry
from .grid import TetGrid, lattice_edges, signed_volumes, tet_edges, tet_faces, tet_grid
from .marching import marching_tets, sdf_sign_change_reg

__all__ = [
    "DMTetConfig",
    "DMTetGeometry",
    "TetGrid",
    "lattice_edges",
    "marching_tets",
    "sdf_sign_change_reg",
    "signed_volumes",
    "tet_edges",
    "tet_faces",
    "tet_grid",
]
