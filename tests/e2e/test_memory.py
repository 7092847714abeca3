"""Peak-memory measurement: the flash strategy never materializes the M x K2 scores, the plain
linalg chain built by IREE's default pipeline does."""

from __future__ import annotations

from tdkit.matchers.attention_problem import Attention
from tdkit.tools.harness import HarnessConfig
from tdkit.tools.memory import memory_bench


def test_flash_adds_no_score_matrix_while_the_chain_does() -> None:
    problem = Attention(batch=(1,), m=1536, k2=1536, d=64)
    scores_mb = 1536 * 1536 * 4 / 2**20  # 9 MB of f32 scores
    rows = memory_bench(problem, "flash", HarnessConfig())["builds"]
    assert rows["default (chain)"]["added_mb"] > 0.8 * scores_mb, rows
    assert rows["flash"]["added_mb"] < 0.2 * scores_mb, rows


def test_causal_flash_adds_no_mask_tensor() -> None:
    """Causal: IREE's default formation writes an M x K2 i8 mask (4 MB here) in a dispatch of
    its own; flash computes each mask tile in its key loop instead."""
    problem = Attention(batch=(1,), m=2048, k2=2048, d=64, causal=True)
    mask_mb = 2048 * 2048 / 2**20
    rows = memory_bench(problem, "flash", HarnessConfig())["builds"]
    assert len(rows["flash"]["dispatches"]) == 1, rows["flash"]["dispatches"]
    assert rows["flash"]["added_mb"] < 0.3 * mask_mb, rows
