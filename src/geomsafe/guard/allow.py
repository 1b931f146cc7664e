"""The allow-list: guard a harmful direction without touching an allowed (target) one.

Some overlap between a target and a harmful feature is wanted (on the default model,
empathy sits at cosine 0.59 to sycophancy). With ``GuardConfig.allow``, every guarded
harmful direction ``u_h`` at a layer is replaced by its component orthogonal to the span
``A`` of the allowed directions there, re-normalised:

    u_h' = (u_h - Q Qᵀ u_h) / ‖u_h - Q Qᵀ u_h‖        Q: orthonormal basis of A (QR)

Every guard then acts on ``u_h'`` only: ablation and the orthogonal projection leave the
projections on the allowed directions unchanged, steering adds nothing along them, and the
penalties ignore their moves. The price: the part of ``u_h`` inside ``A`` is no longer
guarded.

When a harmful direction lies (nearly) inside the allowed span, i.e. its residual norm
``‖u_h - Q Qᵀ u_h‖`` is below :data:`MIN_RESIDUAL` (cosine with the span above 0.995), the
remaining direction is mostly numerical noise and guarding it would be meaningless: this is
an error that names the concept, the layer and the cosine, rather than a silent drop that
would leave the user believing the concept is guarded.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from geomsafe.errors import GeomsafeError
from geomsafe.guard.basis import orthonormal_basis

MIN_RESIDUAL = 0.1


def allowed_complement(
    harmful: Tensor,
    allowed: Tensor,
    names: Sequence[str] = (),
    allow: Sequence[str] = (),
    layer: int | None = None,
) -> Tensor:
    """``[F, D]`` unit rows: each row of ``harmful`` (``[F, D]``) orthogonalised against the
    span of ``allowed`` (``[A, D]``) and re-normalised. ``names``/``allow``/``layer`` only
    word the error raised when a row lies within the span (residual < :data:`MIN_RESIDUAL`)."""
    q = orthonormal_basis(allowed).to(harmful.dtype)  # [D, a]
    rest = harmful - (harmful @ q) @ q.T
    norms = rest.norm(dim=-1)
    for i, norm in enumerate(norms.tolist()):
        if norm < MIN_RESIDUAL:
            name = names[i] if i < len(names) else f"row {i}"
            where = f" at layer {layer}" if layer is not None else ""
            cos = max(0.0, 1.0 - norm**2) ** 0.5
            raise GeomsafeError(
                f"guarded direction {name!r}{where} lies within the span of the allowed "
                f"concepts ({', '.join(allow)}): cosine {cos:.3f}, only {norm:.3f} of it is "
                "outside; remove it from the guarded concepts or the allow-list"
            )
    return rest / norms[:, None]
