"""Problem specs: what to compute, its payload IR, seeded inputs and float64 reference.

A problem is a frozen value. Every problem kind offers the same surface so the harness can
treat them alike: `kind`, `dtype`, `label`, `forms`, `build_payload(form)`, `make_inputs(seed)`,
`reference(inputs)`, `input_specs()`, `output_spec()`, `flops` and `bytes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from iree.compiler import ir
from iree.compiler.dialects import arith, func, linalg
from iree.compiler.dialects import math as math_d

from tdkit.matchers.dtypes import DType
from tdkit.matchers.payload import affine_map, empty, fill, generic, tensor_type

TensorSpec = tuple[tuple[int, ...], DType]


class Problem(Protocol):
    """What the harness needs of any problem kind."""

    kind: str
    dtype: DType

    @property
    def label(self) -> str: ...

    @property
    def forms(self) -> tuple[str, ...]: ...

    @property
    def flops(self) -> int: ...

    @property
    def bytes(self) -> int: ...

    def build_payload(self, form: str = ...) -> ir.Module: ...

    def make_inputs(self, seed: int = 0) -> list[np.ndarray]: ...

    def reference(self, inputs: list[np.ndarray]) -> np.ndarray: ...

    def input_specs(self) -> list[TensorSpec]: ...

    def output_spec(self) -> TensorSpec: ...


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse `512x1024` into (512, 1024); ValueError with the reason otherwise."""
    parts = text.lower().strip().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad shape {text!r}: expected positive integers joined by 'x', "
                         "e.g. 512x1024") from None
    if any(d <= 0 for d in dims):
        raise ValueError(f"bad shape {text!r}: every dimension must be positive")
    return dims


def format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class Softmax:
    """Softmax over one dimension of a rank 1-4 tensor."""

    shape: tuple[int, ...]
    dim: int = -1
    dtype: DType = DType.F32

    kind = "softmax"
    # "softmax": one linalg.softmax. "generic": the ops a frontend writes (max, sub, exp, sum,
    # div as separate generics; IREE raises them to a softmax). "generic_fused": sub and exp
    # fused in one generic, which IREE does not raise: it lands as two dispatches.
    forms = ("softmax", "generic", "generic_fused")

    def __post_init__(self) -> None:
        if not 1 <= len(self.shape) <= 4:
            raise ValueError(f"softmax supports rank 1 to 4, got rank {len(self.shape)}")
        if any(not isinstance(d, int) or d <= 0 for d in self.shape):
            raise ValueError(f"softmax shape must have positive sizes, got {self.shape}")
        if not -len(self.shape) <= self.dim < len(self.shape):
            raise ValueError(f"reduction dim {self.dim} is out of range for rank {len(self.shape)}")
        object.__setattr__(self, "dtype", DType(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def axis(self) -> int:
        """The reduction dimension, normalized to 0..rank-1."""
        return self.dim % self.rank

    @property
    def label(self) -> str:
        return f"softmax {format_shape(self.shape)} dim={self.axis} {self.dtype}"

    @property
    def flops(self) -> int:
        return 5 * math.prod(self.shape)

    @property
    def bytes(self) -> int:
        """Bytes a perfect kernel moves: read the input once, write the output once."""
        return 2 * math.prod(self.shape) * self.dtype.itemsize

    def input_specs(self) -> list[TensorSpec]:
        return [(self.shape, self.dtype)]

    def output_spec(self) -> TensorSpec:
        return (self.shape, self.dtype)

    def build_payload(self, form: str = "softmax") -> ir.Module:
        """`func.func @main(%x) -> softmax(%x)` as `linalg.softmax` or as the decomposed generics
        a frontend writes (see `forms`). Needs an active context."""
        if form not in self.forms:
            raise ValueError(f"unknown softmax form {form!r}; expected one of {self.forms}")
        elem = self.dtype.mlir_type()
        ttype = tensor_type(self.shape, elem)
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):

            @func.FuncOp.from_py_func(ttype, name="main")
            def main(x: ir.Value) -> ir.Value:
                if form == "softmax":
                    init = empty(self.shape, elem)
                    return linalg.SoftmaxOp([ttype], x, init, self.axis).result
                return self._decomposed(x, elem, fuse_sub_exp=form == "generic_fused")

        return module

    def _decomposed(self, x: ir.Value, elem: ir.Type, fuse_sub_exp: bool) -> ir.Value:
        rank, axis = self.rank, self.axis
        keep = [d for d in range(rank) if d != axis]
        reduced_shape = [self.shape[d] for d in keep]
        full = affine_map(rank, list(range(rank)))
        red = affine_map(rank, keep)
        par = ["parallel"] * rank
        reds = ["reduction" if d == axis else "parallel" for d in range(rank)]
        (mx,) = generic([x], [fill(float("-inf"), reduced_shape, elem)], [full, red], reds,
                        lambda a, acc: [arith.MaximumFOp(a, acc).result])
        if fuse_sub_exp:
            (ex,) = generic([x, mx], [empty(self.shape, elem)], [full, red, full], par,
                            lambda a, m, _o: [math_d.ExpOp(arith.SubFOp(a, m).result).result])
        else:
            (sub,) = generic([x, mx], [empty(self.shape, elem)], [full, red, full], par,
                             lambda a, m, _o: [arith.SubFOp(a, m).result])
            (ex,) = generic([sub], [empty(self.shape, elem)], [full, full], par,
                            lambda a, _o: [math_d.ExpOp(a).result])
        (sm,) = generic([ex], [fill(0.0, reduced_shape, elem)], [full, red], reds,
                        lambda a, acc: [arith.AddFOp(a, acc).result])
        (out,) = generic([ex, sm], [empty(self.shape, elem)], [full, red, full], par,
                         lambda e, s, _o: [arith.DivFOp(e, s).result])
        return out

    def make_inputs(self, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.shape) * 3.0
        return [x.astype(self.dtype.numpy)]

    def reference(self, inputs: list[np.ndarray]) -> np.ndarray:
        x = inputs[0].astype(np.float64)
        e = np.exp(x - x.max(axis=self.axis, keepdims=True))
        return e / e.sum(axis=self.axis, keepdims=True)
