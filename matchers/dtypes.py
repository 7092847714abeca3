"""Element types tdkit handles: names, MLIR types, numpy storage types and tolerances."""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.StrEnum):
    """An element type of a problem's inputs and outputs."""

    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype used to store values of this type."""
        table = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
        return np.dtype(table[self.value])

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    def mlir_type(self):  # -> ir.Type; needs an active ir.Context
        from iree.compiler import ir

        return {"f32": ir.F32Type.get, "f16": ir.F16Type.get, "bf16": ir.BF16Type.get}[self.value]()


# Max absolute error allowed against the float64 reference, per element type. Softmax and
# attention outputs are in [0, 1] (attention: convex combinations of V rows in [-1, 1]), so an
# absolute bound is meaningful. f16 has an 11-bit significand (eps 9.8e-4), bf16 an 8-bit one
# (eps 7.8e-3); results are rounded to the storage type once at the end plus accumulation error.
TOLERANCE_F32 = 2e-5
TOLERANCE_F16 = 4e-3
TOLERANCE_BF16 = 3e-2

TOLERANCES: dict[DType, float] = {
    DType.F32: TOLERANCE_F32,
    DType.F16: TOLERANCE_F16,
    DType.BF16: TOLERANCE_BF16,
}


def parse_dtype(text: str) -> DType:
    """Return the DType named `text`, raising ValueError with the accepted names otherwise."""
    try:
        return DType(text)
    except ValueError:
        names = ", ".join(d.value for d in DType)
        raise ValueError(f"unsupported dtype {text!r}; expected one of {names}") from None
