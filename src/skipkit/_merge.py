"""The :class:`Merge` base class (the protocol of :mod:`skipkit.merges`), split from it so
the gate merges (:mod:`skipkit._gates`) can subclass it; import it from :mod:`skipkit.merges`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import nn

from skipkit.shapes import Layout, ShapeMismatchError

Shape = tuple[int, ...]
StartsAsBranch = Literal["if_skip_is_zero", "by_own_parameters", "never"] | None


class Merge(nn.Module):
    """Base class of all merges: ``forward(skip, branch) -> Tensor``.

    Attributes:
        match_channels: whether the shortcut must give the skip the branch's channel count
            (``False`` for concatenation, where only the other dims must agree).
        name: the string that builds this merge (``"add"``, ``"film"``; see the module
            table); a merge no string builds: its class name.
        formula: what ``forward`` computes, in ``s`` (the skip) and ``b`` (the branch).
        starts_as_branch: how the merge can give ``b`` alone at step 0:
            ``"if_skip_is_zero"``, ``"by_own_parameters"`` (:meth:`start_as_branch`),
            ``"never"``, or ``None`` when unknown (a merge defined outside skipkit).
        neutral_branch: the branch value that deletes the branch (a lesion,
            :func:`skipkit.diagnostics.lesion_study`): 0 for the sums, gates and concat,
            1 for the products (``mul``: ``s``; ``film``: ``1 + s``).
    """

    match_channels: ClassVar[bool] = True
    path: str | None = None
    starts_as_branch: StartsAsBranch = None
    neutral_branch: ClassVar[float] = 0.0
    _name: str = ""
    _formula: str = ""

    @property
    def name(self) -> str:
        return self._name or type(self).__name__

    @property
    def formula(self) -> str:
        return self._formula or f"{type(self).__name__}(s, b)"

    def start_as_branch(self) -> None:
        """Set the merge's own parameters so that ``forward(s, b) == b`` for every ``s``
        (for ``starts_as_branch == "by_own_parameters"``; call after :meth:`setup`)."""
        raise NotImplementedError(
            f"merge {self.name!r} ({self.formula}) has no parameters that make it start as b"
        )

    def setup(
        self,
        skip_shape: Sequence[int],
        branch_shape: Sequence[int],
        layout: Layout | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Check the shapes and create any shape-dependent parameters."""
        self._check(tuple(skip_shape), tuple(branch_shape))

    @property
    def ready(self) -> bool:
        """True once every parameter exists (always, for merges without lazy parameters)."""
        return True

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        """The merge's output with the skip path removed (the plain twin): ``branch``, or
        what the merge makes of it alone (a scaled branch, zeros where a skip was
        concatenated)."""
        return branch

    def out_shape(self, skip_shape: Sequence[int], branch_shape: Sequence[int]) -> Shape:
        """Shape of ``forward(skip, branch)``."""
        return tuple(branch_shape)

    def _check(self, skip_shape: Shape, branch_shape: Shape) -> None:
        if skip_shape != branch_shape:
            raise ShapeMismatchError(
                f"{type(self).__name__} needs equal shapes",
                path=self.path,
                skip_shape=skip_shape,
                branch_shape=branch_shape,
                fixes=["use shortcut='auto' so skipkit projects the skip"],
            )
