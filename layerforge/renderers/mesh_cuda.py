"""The ``cuda`` visibility backend of :mod:`layerforge.renderers.mesh`.

The kernel (``csrc/rasterize.cu`` + ``csrc/rasterize.cpp``) is JIT-compiled with
``torch.utils.cpp_extension.load`` on first use and cached in ``$TORCH_EXTENSIONS_DIR``
(torch's default cache folder when unset); later processes load the cached build. It needs
the CUDA toolkit (``nvcc``; set ``CUDA_HOME``) but no GPU to compile: without a visible GPU
and without ``TORCH_CUDA_ARCH_LIST`` it builds for sm_80 and sm_90.

The kernel evaluates the same float32 operations as the torch reference in the same order
(compiled with ``--fmad=false``), so both backends return identical face ids.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from layerforge.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from layerforge.renderers.mesh import _ScreenFaces

CSRC = Path(__file__).parent / "csrc"
EXTENSION_NAME = "layerforge_rasterize_v1"
DEFAULT_ARCHS = ("80", "90")


def cuda_home() -> Path | None:
    """The CUDA toolkit folder (holding bin/nvcc and include/cuda_runtime_api.h), or None.

    Looks at ``CUDA_HOME``, ``CUDA_PATH``, ``/usr/local/cuda`` and finally the ``nvcc`` on
    ``PATH`` (symlinks resolved; wrapper scripts outside a toolkit are ignored).
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    found = shutil.which("nvcc")
    if found:
        candidates.append(str(Path(found).resolve().parent.parent))
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").exists() and (Path(c) / "include" / "cuda_runtime_api.h").exists():
            return Path(c)
    return None


def nvcc_path() -> str | None:
    """Path of the toolkit's nvcc (see :func:`cuda_home`); None if absent."""
    home = cuda_home()
    return None if home is None else str(home / "bin" / "nvcc")


@functools.lru_cache(maxsize=1)
def load_extension(verbose: bool = False) -> ModuleType:
    """Compile (first call) or load (cached) the rasterizer extension."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise ConfigError(
            "the CUDA toolkit (nvcc + headers) was not found, so the 'cuda' mesh backend cannot be built",
            "set CUDA_HOME to the toolkit folder, or use backend='torch'",
        )
    if torch.version.cuda is None:
        raise ConfigError(
            "this torch build has no CUDA support, so the 'cuda' mesh backend cannot be built",
            "install a CUDA build of torch, or use backend='torch'",
        )
    home = str(Path(nvcc).parent.parent)
    os.environ.setdefault("CUDA_HOME", home)
    from torch.utils import cpp_extension

    # torch fixes its CUDA_HOME when cpp_extension is first imported (possibly from PATH's
    # nvcc wrapper); point it at the real toolkit.
    if not cpp_extension.CUDA_HOME or not (Path(cpp_extension.CUDA_HOME) / "include" / "cuda_runtime_api.h").exists():
        cpp_extension.CUDA_HOME = home

    cuda_flags = ["-O3", "--fmad=false"]
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        for arch in DEFAULT_ARCHS:
            cuda_flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    build_dir = os.environ.get("TORCH_EXTENSIONS_DIR")
    kwargs = {}
    if build_dir:
        path = Path(build_dir) / EXTENSION_NAME
        path.mkdir(parents=True, exist_ok=True)
        kwargs["build_directory"] = str(path)
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(CSRC / "rasterize.cpp"), str(CSRC / "rasterize.cu")],
        extra_cflags=["-O3"],
        extra_cuda_cflags=cuda_flags,
        verbose=verbose,
        **kwargs,
    )


def visibility_cuda(sf: _ScreenFaces, batch: int, height: int, width: int, far: float) -> Tensor:
    """Face ids [B, H, W] int64 (-1 empty) from the kernel; same contract as the torch backend."""
    ext = load_extension()
    return ext.visibility(
        sf.xy.contiguous(),
        sf.edge.contiguous(),
        sf.inv_z.contiguous(),
        sf.area.contiguous(),
        sf.bbox.contiguous(),
        sf.batch.contiguous(),
        sf.face.contiguous(),
        int(batch),
        int(height),
        int(width),
        float(far),
    )
