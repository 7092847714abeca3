"""The attention problem: softmax(scale * Q @ K^T + mask) @ V over one or more batch dims.

`Attention` is a frozen problem spec with the same surface as the other problem kinds
(`tdkit.matchers.problems.Problem`): `kind`, `dtype`, `label`, `forms`, `build_payload(form)`,
`make_inputs(seed)`, `reference(inputs)`, `input_specs()`, `output_spec()`, `flops`, `bytes`.

Layouts (B = the batch dims, e.g. batch x heads): Q is B x M x D, K is B x K2 x D (not
transposed), V is B x K2 x N, the optional additive mask is B x M x K2 (same element type as
Q/K/V), the output is B x M x N in the input element type.

Semantics, shared by both payload forms and the float64 reference:

* ``s = scale * (Q @ K^T) + mask`` with ``scale`` rounded to the input element type (the payload
  holds it as an ``arith.constant`` of that type, so the reference uses the rounded value).
* ``causal``: key ``j`` is visible to query ``i`` iff ``j <= i`` (top-left aligned, like
  ``torch.tril(ones(M, K2))``). Hidden keys get weight exactly 0. Key 0 is always visible, so
  causal masking alone never hides a whole row. Causal is a select (to ``-inf`` or an i1
  mask), never an added ``finfo.min``: adding it to a user mask entry of ``finfo.min`` would
  overflow to ``-inf`` in f32 (-3.4e38 + -3.4e38).
* A user mask row whose visible entries are all ``-inf`` gives NaN everywhere (0/0), also in
  the reference; ``make_inputs`` never writes ``-inf``.
* ``out = softmax_over_K2(s) @ V``.
* A row whose every visible key carries a mask of ``finfo(dtype).min`` ("fully masked row")
  is defined by float64 arithmetic: for f32 and bf16, ``finfo.min + score`` rounds to
  ``finfo.min`` in float64 as well, so the row is the uniform average of the visible V rows;
  for f16 (``finfo.min = -65504``) the scores survive and the row equals the unmasked one. What
  each compiled form produces for such rows is recorded in ``FULLY_MASKED_ROWS``: the chain
  matches the reference; the attention op gives NaN for f32/bf16 (IREE multiplies the mask by
  log2(e), finfo.min overflows to -inf, the online softmax then divides 0 by 0).
  ``make_inputs`` creates such rows only with ``fully_masked_rows=True``.

Precision: for f16/bf16 inputs the scores, the softmax and both matmul accumulations are f32;
the probabilities P are rounded to the input type before ``P @ V`` (as IREE's attention
decomposition does), and the result is rounded to the input type once.

Payload forms (both compile and run with IREE 3.13 default llvm-cpu flags for f32, f16 and
bf16, causal or not, with or without a mask; the chain needs no
``--iree-llvmcpu-link-embedded=false`` because its softmax is f32, which avoids the f16
``fmaxf`` libcall):

* ``"attention"``: one ``iree_linalg_ext.attention`` op (properties form, region yielding the
  f32 score unchanged). Causal without a user mask is an ``i1`` M x K2 mask built by a
  ``linalg.generic`` from ``linalg.index`` (map ``(m, k2)``, broadcast over batch); with a
  user mask it is folded into a float B x M x K2 mask: ``j <= i ? mask : -inf``.
* ``"chain"``: the unfused frontend form: batch dims collapsed to one
  (``tensor.collapse_shape``), ``linalg.batch_matmul`` Q x K^T (K^T through the indexing maps,
  f32 result), one ``linalg.generic`` for ``* scale``, ``+ mask`` and the causal select to
  ``-inf``, ``linalg.softmax`` over K2 (f32), a ``arith.truncf`` generic to the input type
  (f16/bf16 only), ``linalg.batch_matmul`` P x V (f32 result), a ``truncf`` generic
  (f16/bf16 only), ``tensor.expand_shape`` back to the batch dims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from iree.compiler import ir
from iree.compiler.dialects import arith, func, linalg, tensor

from tdkit.matchers.dtypes import DType
from tdkit.matchers.payload import affine_map, empty, fill, generic, tensor_type
from tdkit.matchers.problems import TensorSpec

# What each compiled (form, dtype) produced for fully masked rows (every visible key masked with
# finfo(dtype).min), measured with iree-compile/iree-run-module 3.13.0 on llvm-cpu (host CPU),
# shapes 2x3x37x53x16 and 2x3x64x128x64, seeds 0-3. "reference" = within TOLERANCES.
# The attention op computes softmax with exp2 and multiplies the mask by log2(e) first: f32/bf16
# finfo.min * log2(e) overflows to -inf, every key of the row is -inf, and the online softmax
# divides 0 by 0. A mask value above -finfo.max / log2(e) (e.g. finfo.min / 2) stays finite and
# gives the uniform row (measured: no NaN, error 5e-8 f32). For f16, -65504 * log2(e) = -94504
# is fine, but there the f32 spacing is 0.0078, which swamps the score differences the
# reference keeps.
FULLY_MASKED_ROWS: dict[tuple[str, DType], str] = {
    ("attention", DType.F32): "nan",
    ("attention", DType.BF16): "nan",
    ("attention", DType.F16): "finite, but up to 1.2e-2 off (above the f16 tolerance)",
    ("chain", DType.F32): "reference",
    ("chain", DType.BF16): "reference",
    ("chain", DType.F16): "reference (max error 1.3e-3)",
}


def _lowest(dtype: DType) -> float:
    """finfo(dtype).min: the most negative finite value of the storage type."""
    return float(ml_dtypes.finfo(dtype.numpy).min)


def _shape_text(dims: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in dims)


@dataclass(frozen=True)
class Attention:
    """Scaled dot-product attention ``softmax(scale * Q @ K^T + mask) @ V``."""

    batch: tuple[int, ...]
    m: int
    k2: int
    d: int
    n: int | None = None
    dtype: DType = DType.F32
    scale: float | None = None
    causal: bool = False
    mask: bool = False

    kind = "attention"
    forms = ("attention", "chain")

    def __post_init__(self) -> None:
        batch = self.batch
        if isinstance(batch, int | np.integer) and not isinstance(batch, bool):
            batch = (batch,)
        try:
            batch = tuple(batch) if not isinstance(batch, str) else None
        except TypeError:
            batch = None
        if batch is None:
            raise ValueError(f"attention batch must be a tuple of sizes, got {self.batch!r}")
        if not batch:
            raise ValueError("attention needs at least one batch dimension, e.g. batch=(1,)")
        names = [f"batch[{i}]" for i in range(len(batch))] + ["m", "k2", "d", "n"]
        values = [*batch, self.m, self.k2, self.d, self.n]
        sizes = {}
        for name, size in zip(names, values, strict=True):
            if name == "n" and size is None:
                continue
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
                raise ValueError(f"attention size {name} must be a positive integer, got {size!r}")
            sizes[name] = int(size)
        try:
            dtype = DType(self.dtype)
        except ValueError:
            accepted = ", ".join(d.value for d in DType)
            raise ValueError(f"unsupported attention dtype {self.dtype!r}; expected one of "
                             f"{accepted}") from None
        object.__setattr__(self, "batch", tuple(sizes[n] for n in names[:len(batch)]))
        for name in ("m", "k2", "d", "n"):
            if name in sizes:
                object.__setattr__(self, name, sizes[name])
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "causal", bool(self.causal))
        object.__setattr__(self, "mask", bool(self.mask))
        if self.scale is not None:
            number = isinstance(self.scale, int | float | np.floating)
            if isinstance(self.scale, bool) or not number:
                raise ValueError(f"attention scale must be a number, got {self.scale!r}")
            object.__setattr__(self, "scale", float(self.scale))
            rounded = self.effective_scale
            if not math.isfinite(rounded) or rounded == 0.0:
                raise ValueError(f"attention scale {self.scale!r} is zero or not finite in "
                                 f"{dtype}")

    # ----------------------------------------------------------------- sizes and names

    @property
    def value_dim(self) -> int:
        """N, the value/output head dim (defaults to D)."""
        return self.d if self.n is None else self.n

    @property
    def effective_scale(self) -> float:
        """The scale as the payload holds it: given or 1/sqrt(D), rounded to the input type."""
        scale = 1.0 / math.sqrt(self.d) if self.scale is None else float(self.scale)
        with np.errstate(over="ignore"):
            return float(np.asarray(scale).astype(self.dtype.numpy).astype(np.float64))

    @property
    def batch_size(self) -> int:
        """The product of the batch dims."""
        return math.prod(self.batch)

    @property
    def flops(self) -> int:
        """Dense count of the two matmuls, 2·B·M·K2·D + 2·B·M·K2·N (causal is not halved)."""
        b = self.batch_size
        return 2 * b * self.m * self.k2 * self.d + 2 * b * self.m * self.k2 * self.value_dim

    @property
    def bytes(self) -> int:
        """Bytes a perfect kernel moves: read Q, K, V (and the mask) once, write O once."""
        elems = sum(math.prod(shape) for shape, _ in self.input_specs())
        elems += math.prod(self.output_spec()[0])
        return elems * self.dtype.itemsize

    @property
    def label(self) -> str:
        dims = _shape_text((*self.batch, self.m, self.k2, self.d))
        parts = ["attention", dims]
        if self.n is not None and self.n != self.d:
            parts.append(f"n={self.n}")
        if self.scale is not None:
            parts.append(f"scale={self.scale:g}")
        if self.causal:
            parts.append("causal")
        if self.mask:
            parts.append("mask")
        parts.append(str(self.dtype))
        return " ".join(parts)

    def input_specs(self) -> list[TensorSpec]:
        """Q, K, V and (with `mask`) the additive mask, in `main`'s argument order."""
        b = self.batch
        specs = [((*b, self.m, self.d), self.dtype), ((*b, self.k2, self.d), self.dtype),
                 ((*b, self.k2, self.value_dim), self.dtype)]
        if self.mask:
            specs.append(((*b, self.m, self.k2), self.dtype))
        return specs

    def output_spec(self) -> TensorSpec:
        return ((*self.batch, self.m, self.value_dim), self.dtype)

    # ----------------------------------------------------------------- payload

    def build_payload(self, form: str = "attention") -> ir.Module:
        """`func.func @main(%q, %k, %v[, %mask]) -> tensor<B...xMxN>` in the current context.

        `form` is "attention" (one `iree_linalg_ext.attention`) or "chain" (batch_matmul,
        scale/mask generic, `linalg.softmax`, batch_matmul)."""
        if form not in self.forms:
            raise ValueError(f"unknown attention form {form!r}; expected one of {self.forms}")
        elem = self.dtype.mlir_type()
        arg_types = [tensor_type(shape, elem) for shape, _ in self.input_specs()]
        out_type = tensor_type(self.output_spec()[0], elem)
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp("main", ir.FunctionType.get(arg_types, [out_type]))
            block = fn.add_entry_block()
            with ir.InsertionPoint(block):
                args = list(block.arguments)
                q, k, v = args[:3]
                user_mask = args[3] if self.mask else None
                if form == "attention":
                    out = self._attention_op(q, k, v, user_mask, elem, out_type)
                else:
                    out = self._chain(q, k, v, user_mask, elem)
                func.ReturnOp([out])
        return module

    def _scale_constant(self, elem: ir.Type) -> ir.Value:
        return arith.ConstantOp(elem, ir.FloatAttr.get(elem, self.effective_scale)).result

    def _causal_keep(self, row_dim: int, col_dim: int) -> ir.Value:
        """Inside a generic body: the i1 `index(col_dim) <= index(row_dim)`."""
        i = linalg.IndexOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64), row_dim)).result
        j = linalg.IndexOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64), col_dim)).result
        return arith.CmpIOp(arith.CmpIPredicate.ule, j, i).result

    def _attention_op(self, q: ir.Value, k: ir.Value, v: ir.Value, user_mask: ir.Value | None,
                      elem: ir.Type, out_type: ir.Type) -> ir.Value:
        nb = len(self.batch)
        rank = nb + 4  # (batch..., m, k1, k2, n)
        bd = list(range(nb))
        dm, dk1, dk2, dn = nb, nb + 1, nb + 2, nb + 3
        maps = [affine_map(rank, [*bd, dm, dk1]),   # Q
                affine_map(rank, [*bd, dk2, dk1]),  # K
                affine_map(rank, [*bd, dk2, dn]),   # V
                affine_map(rank, [])]               # scale
        operands = [q, k, v, self._scale_constant(elem)]
        mask = self._attention_mask(user_mask, elem)
        if mask is not None:
            mask_value, full = mask
            maps.append(affine_map(rank, [*bd, dm, dk2] if full else [dm, dk2]))
            operands.append(mask_value)
        maps.append(affine_map(rank, [*bd, dm, dn]))  # O
        init = empty(self.output_spec()[0], elem)
        f32 = ir.F32Type.get()
        op = ir.Operation.create(
            "iree_linalg_ext.attention",
            results=[out_type],
            operands=[*operands, init],
            attributes={"indexing_maps": ir.ArrayAttr.get(maps)},
            regions=1,
        )
        body = op.regions[0].blocks.append(f32)
        with ir.InsertionPoint(body):
            ir.Operation.create("iree_linalg_ext.yield", operands=[body.arguments[0]])
        return op.results[0]

    def _attention_mask(self, user_mask: ir.Value | None,
                        elem: ir.Type) -> tuple[ir.Value, bool] | None:
        """The attention op's mask operand (or None) and whether it spans the batch dims.

        Causal only: an i1 M x K2 tensor (true = visible) from `linalg.index`, broadcast over
        the batch by its map. User mask and causal: `j <= i ? mask : -inf` in one generic."""
        if user_mask is None and not self.causal:
            return None
        if user_mask is None:
            i1 = ir.IntegerType.get_signless(1)
            (keep,) = generic([], [empty((self.m, self.k2), i1)], [affine_map(2, [0, 1])],
                              ["parallel", "parallel"], lambda _o: [self._causal_keep(0, 1)])
            return keep, False
        if not self.causal:
            return user_mask, True
        shape = self.input_specs()[3][0]
        rank = len(shape)
        ident = affine_map(rank, list(range(rank)))
        neg_inf = arith.ConstantOp(elem, ir.FloatAttr.get(elem, float("-inf"))).result

        def body(mval: ir.Value, _o: ir.Value) -> list[ir.Value]:
            keep = self._causal_keep(rank - 2, rank - 1)
            return [arith.SelectOp(keep, mval, neg_inf).result]

        (combined,) = generic([user_mask], [empty(shape, elem)], [ident, ident],
                              ["parallel"] * rank, body)
        return combined, True

    def _chain(self, q: ir.Value, k: ir.Value, v: ir.Value, user_mask: ir.Value | None,
               elem: ir.Type) -> ir.Value:
        f32 = ir.F32Type.get()
        nb = len(self.batch)
        bsz, m, k2, n = self.batch_size, self.m, self.k2, self.value_dim

        # Batch dims collapse to one: reassociation [[0, .., nb-1], [nb], [nb+1]].
        i64 = ir.IntegerType.get_signless(64)
        reassoc = ir.ArrayAttr.get([
            ir.ArrayAttr.get([ir.IntegerAttr.get(i64, i) for i in group])
            for group in (list(range(nb)), [nb], [nb + 1])])

        def collapse(x: ir.Value) -> ir.Value:
            if nb == 1:
                return x
            shape = ir.RankedTensorType(x.type).shape
            rtype = tensor_type((bsz, shape[-2], shape[-1]), elem)
            return tensor.CollapseShapeOp(rtype, x, reassoc).result

        q3, k3, v3 = collapse(q), collapse(k), collapse(v)
        mask3 = collapse(user_mask) if user_mask is not None else None

        # S = Q @ K^T, accumulated and stored in f32; K^T through the indexing maps.
        qk_maps = [affine_map(4, r).value for r in ([0, 1, 3], [0, 2, 3], [0, 1, 2])]
        s = linalg.batch_matmul(q3, k3, outs=[fill(0.0, (bsz, m, k2), f32)],
                                indexing_maps=qk_maps)

        # S * scale (+ mask) (causal: j > i -> -inf), one elementwise generic in f32.
        scale = arith.ConstantOp(f32, ir.FloatAttr.get(f32, self.effective_scale)).result
        neg_inf = arith.ConstantOp(f32, ir.FloatAttr.get(f32, float("-inf"))).result
        ident = affine_map(3, [0, 1, 2])
        ins = [s] + ([mask3] if mask3 is not None else [])

        def scale_mask(*args: ir.Value) -> list[ir.Value]:
            x = arith.MulFOp(args[0], scale).result
            if mask3 is not None:
                mval = args[1]
                if elem != f32:
                    mval = arith.ExtFOp(f32, mval).result
                x = arith.AddFOp(x, mval).result
            if self.causal:
                x = arith.SelectOp(self._causal_keep(1, 2), x, neg_inf).result
            return [x]

        (s,) = generic(ins, [empty((bsz, m, k2), f32)], [ident] * (len(ins) + 1),
                       ["parallel"] * 3, scale_mask)

        stype = tensor_type((bsz, m, k2), f32)
        p = linalg.softmax([stype], s, empty((bsz, m, k2), f32), 2)
        if elem != f32:
            p = self._truncf(p, (bsz, m, k2), elem)

        o = linalg.batch_matmul(p, v3, outs=[fill(0.0, (bsz, m, n), f32)])
        if elem != f32:
            o = self._truncf(o, (bsz, m, n), elem)
        if nb == 1:
            return o
        out_shape = self.output_spec()[0]
        return tensor.ExpandShapeOp(tensor_type(out_shape, elem), o, reassoc, [],
                                    list(out_shape)).result

    @staticmethod
    def _truncf(x: ir.Value, shape: tuple[int, ...], elem: ir.Type) -> ir.Value:
        ident = affine_map(len(shape), list(range(len(shape))))
        (y,) = generic([x], [empty(shape, elem)], [ident, ident], ["parallel"] * len(shape),
                       lambda a, _o: [arith.TruncFOp(elem, a).result])
        return y

    # ----------------------------------------------------------------- data

    def make_inputs(self, seed: int = 0, *, fully_masked_rows: bool = False) -> list[np.ndarray]:
        """Seeded Q, K, V uniform in [-1, 1] (and the mask), in the storage dtype.

        The mask holds a bias uniform in [-2, 0] with about 20% of the entries set to
        `finfo(dtype).min` (masked keys); key 0 is never masked, so every row keeps a visible
        key, unless `fully_masked_rows` asks for every 5th query row (starting at row 1) of
        the first batch element to be masked entirely."""
        rng = np.random.default_rng(seed)
        np_dtype = self.dtype.numpy
        arrays = [rng.uniform(-1.0, 1.0, shape).astype(np_dtype)
                  for shape, _ in self.input_specs()[:3]]
        if self.mask:
            shape = self.input_specs()[3][0]
            low = _lowest(self.dtype)
            bias = rng.uniform(-2.0, 0.0, shape)
            hidden = rng.random(shape) < 0.2
            hidden[..., 0] = False
            bias[hidden] = low
            if fully_masked_rows:
                first = (0,) * len(self.batch)
                bias[first][1::5, :] = low
            arrays.append(bias.astype(np_dtype))
        elif fully_masked_rows:
            raise ValueError("fully_masked_rows needs a problem with mask=True")
        return arrays

    def reference(self, inputs: list[np.ndarray]) -> np.ndarray:
        """float64 attention of the stored inputs (see the module docstring for semantics)."""
        expected = len(self.input_specs())
        if len(inputs) != expected:
            raise ValueError(f"attention reference needs {expected} inputs, got {len(inputs)}")
        q, k, v = (np.asarray(x).astype(np.float64) for x in inputs[:3])
        s = np.matmul(q, np.swapaxes(k, -1, -2)) * self.effective_scale
        if self.mask:
            s = s + np.asarray(inputs[3]).astype(np.float64)
        if self.causal:
            visible = np.tril(np.ones((self.m, self.k2), dtype=bool))
            s = np.where(visible, s, -np.inf)
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p = p / p.sum(axis=-1, keepdims=True)
        return np.matmul(p, v)
