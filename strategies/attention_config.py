"""The `config` attention family: configure IREE's own CPU attention pipeline from a library.

A kernel-config library entry (no codegen spec) whose matcher finds the attention dispatch's
`iree_linalg_ext.online_attention` (`tdkit.matchers.attention`) and whose action annotates it
with

    compilation_info = #iree_codegen.compilation_info<
      lowering_config = #iree_cpu.lowering_config<distribution = [1, DM, 0, 0, DN],
        vector_common_parallel = [1, VM, 0, 0, VN], vector_reduction = [0, 0, 0, RK, 0]>,
      translation_info = #iree_codegen.translation_info<
        pipeline = #iree_cpu.pipeline<LinalgExtTileAndVectorize>>>

(loops `(b, m, k1, k2, n)`; the batch entry is dropped for rank-4 dispatches), plus the marker
`tdkit.strategy = "<entry>"` that `tdkit.tools.applied` uses to tell that this dispatch was
configured by tdkit. IREE then tiles, decomposes, vectorizes (masked vectors for partial tiles)
and lowers the dispatch itself.

Limitation (IREE 3.13): fully masked rows (every visible key masked with `finfo.min`) give NaN
for f32 and bf16, as with IREE's default pipeline. The pipeline's `DecomposeAttentionPass`
overwrites the op's `decomposition_config` with its own `use_exp2 = true` option, so the mask
is always multiplied by log2(e), `finfo.min` overflows to `-inf` and the row becomes 0/0. The
`flash` family decomposes the op itself with `use_exp2 = false` and gets these rows right.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from iree.compiler import ir
from iree.compiler.dialects import transform

from tdkit.matchers.attention import CodegenPredicate, build_codegen_matcher, predicate_name
from tdkit.strategies import iree_ops
from tdkit.strategies.attention_flash import predicates_for
from tdkit.strategies.base import require
from tdkit.strategies.library import LibraryEntry, configuring_entry, strategy_marker

FAMILY = "config"
PIPELINE = "LinalgExtTileAndVectorize"
# IREE's CPU pipeline rejects vectors of 32 KiB and more ("One or more operations with large
# vector sizes (32768 bytes) were found"). The largest vector is the broadcast Q·Kᵀ operand,
# VM x RK x D f32 (and VM x RK x VN for P·V): VM x RK >= 128 failed at D = 64, 64 at D = 128.
MAX_VECTOR_BYTES = 32768
MAX_VM_RK = 127


@dataclass(frozen=True)
class ConfigKnobs:
    """Tile sizes written into the lowering_config.

    Attributes:
      rows: query rows per workgroup (distribution tile of M, DM).
      value_cols: value columns per workgroup (distribution tile of N, DN); 0 = all of N.
      vector_rows: query rows per vector tile (VM).
      vector_cols: value columns per vector tile (VN), a power of two.
      key_tile: keys per step of the key loop (RK, the vector_reduction tile of K2).
    """

    # 16 rows: side by side on 2 workers (2026-11-24, sixth session, 3 rounds) 16 rows ran
    # 1.08x, 1.12x and 1.01x the speed of 64 at 8x1024x1024x64, 4x1024x1024x128 and
    # 2x4096x4096x64 (8 rows: 1.11x, 1.17x, 0.98x; 32 rows: 1.06-1.10x, 1.04x, 0.88x): more,
    # smaller workgroups balance the two workers better.
    rows: int = 16
    value_cols: int = 0
    vector_rows: int = 8
    vector_cols: int = 64
    key_tile: int = 8

    def check(self, problem: Any = None) -> None:
        """Raise KnobError with one sentence for invalid values or combinations, and (with a
        problem) for tiles larger than its dims."""
        for name in ("rows", "vector_rows", "vector_cols", "key_tile"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    f"{name} must be a positive integer, got {value!r}")
        require(isinstance(self.value_cols, int) and self.value_cols >= 0,
                f"value_cols must be 0 (all of N) or a positive integer, got {self.value_cols!r}")
        require(_is_pow2(self.vector_cols),
                f"vector_cols must be a power of two (a vector width), got {self.vector_cols}")
        require(self.vector_rows <= self.rows,
                f"vector_rows ({self.vector_rows}) exceeds rows ({self.rows})")
        require(self.value_cols == 0 or self.vector_cols <= self.value_cols,
                f"vector_cols ({self.vector_cols}) exceeds value_cols ({self.value_cols})")
        require(self.vector_rows * self.key_tile <= MAX_VM_RK,
                f"vector_rows x key_tile = {self.vector_rows * self.key_tile} is 128 or more: "
                f"IREE rejects the resulting 32 KiB vectors")
        require(self.rows <= 1024, f"rows must be at most 1024, got {self.rows}")
        if problem is None:
            return
        require(self.rows <= problem.m, f"rows ({self.rows}) exceeds the query length "
                                        f"M = {problem.m}")
        require(self.key_tile <= problem.k2, f"key_tile ({self.key_tile}) exceeds the key "
                                             f"length K2 = {problem.k2}")
        n = problem.value_dim
        require(self.value_cols <= n, f"value_cols ({self.value_cols}) exceeds the value dim "
                                      f"N = {n}")
        require(self.vector_cols <= _pow2_ceil(n),
                f"vector_cols ({self.vector_cols}) exceeds the value dim N = {n} (rounded up "
                f"to a power of two: {_pow2_ceil(n)})")
        vector_bytes = self.vector_rows * self.key_tile * max(problem.d, self.vector_cols) * 4
        require(vector_bytes < MAX_VECTOR_BYTES,
                f"vector_rows x key_tile x head dim = {vector_bytes // 4} f32 is 32 KiB or more "
                f"(vector_rows={self.vector_rows}, key_tile={self.key_tile}, D={problem.d}): "
                f"IREE rejects such vectors")


def fit(problem: Any, knobs: ConfigKnobs) -> ConfigKnobs:
    """Shrink the default knobs to a small problem (tiles no larger than its dims)."""
    rows = min(knobs.rows, problem.m)
    vector_rows = min(knobs.vector_rows, rows)
    vector_cols = min(knobs.vector_cols, _pow2_ceil(problem.value_dim))
    key_tile = min(knobs.key_tile, problem.k2)
    while key_tile > 1 and vector_rows * key_tile * max(problem.d, vector_cols) * 4 >= \
            MAX_VECTOR_BYTES:
        key_tile //= 2
    return replace(knobs, rows=rows, vector_rows=vector_rows, key_tile=key_tile,
                   vector_cols=vector_cols)


def space(problem: Any) -> dict[str, tuple[Any, ...]]:
    """The knob ranges `tdkit tune` searches (`check` prunes tiles larger than the problem's
    dims and vectors IREE rejects)."""
    del problem
    return {
        "rows": (8, 16, 32, 64, 128, 256),
        "value_cols": (0, 16, 32, 64),
        "vector_rows": (1, 2, 4, 8, 16),
        "vector_cols": (8, 16, 32, 64),
        "key_tile": (1, 2, 4, 8, 16, 32),
    }


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def lowering_config(knobs: ConfigKnobs, rank: int) -> ir.Attribute:
    """The `#iree_cpu.lowering_config` for a rank-`rank` online_attention."""
    batch = [1] if rank == 5 else []
    zero_b = [0] if rank == 5 else []
    return iree_ops.cpu_lowering_config(
        distribution=batch + [knobs.rows, 0, 0, knobs.value_cols],
        vector_common_parallel=batch + [knobs.vector_rows, 0, 0, knobs.vector_cols],
        vector_reduction=zero_b + [0, 0, knobs.key_tile, 0])


def build_config_action(name: str, spec_name: str, knobs: ConfigKnobs, pred: CodegenPredicate
                        ) -> transform.NamedSequenceOp:
    """`@name(%op {transform.readonly})`: annotate the online_attention `%op` with the
    compilation_info and the tdkit marker."""
    seq = transform.NamedSequenceOp(name, [transform.AnyOpType.get()], [],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        op = seq.bodyTarget
        info = iree_ops.compilation_info(lowering_config(knobs, pred.rank),
                                         iree_ops.translation_info_cpu_pipeline(PIPELINE))
        iree_ops.annotate(op, "compilation_info", info)
        strategy_marker(op, spec_name)
        transform.YieldOp()
    return seq


def entry_name(pred: CodegenPredicate) -> str:
    return f"tdkit_attention_config_{predicate_name(pred)}"


def library_entry(knobs: ConfigKnobs, pred: CodegenPredicate) -> LibraryEntry:
    """The matcher and configuring action for dispatches satisfying `pred` (no codegen spec)."""
    knobs.check()
    name = entry_name(pred)
    return configuring_entry(
        FAMILY, name, lambda n: build_codegen_matcher(n, pred),
        lambda n, entry: build_config_action(n, entry, knobs, pred), config=(knobs, pred))


def library_entries(problem: Any, knobs: ConfigKnobs, *, exact: bool = False,
                    mask: str | None = None) -> list[LibraryEntry]:
    """Entries configuring `problem`'s attention dispatch (or any attention dispatch for
    None); with `exact`, matching only its exact sizes (exported tuned strategies)."""
    return [library_entry(knobs, p) for p in predicates_for(problem, exact=exact, mask=mask)]
