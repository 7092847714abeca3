/* Throughput of AVX-512 BF16 dot products against f32 FMAs on this machine.
 *
 * docs/attention.md cites it: one `vdpbf16ps zmm` (32 bf16 MACs) per 2 cycles against two
 * `vfmadd231ps zmm` (16 f32 MACs each) per cycle, i.e. BF16 dot products peak at half the
 * f32 FMA rate, so no AVX-512 BF16 kernel can beat the f32 rate here.
 *
 *   gcc -O2 -mavx512f -mavx512bf16 -o /tmp/dpbf16 docs/probes/dpbf16_throughput.c && /tmp/dpbf16
 *
 * Each loop runs CHAINS independent accumulators (enough to hide the latency), so the time per
 * instruction is the issue rate; CHAINS = 1 gives the latency. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 16
#define ITERS 50000000L

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  __m512 dot[CHAINS], fma[CHAINS];
  for (int j = 0; j < CHAINS; ++j) dot[j] = fma[j] = _mm512_setzero_ps();
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = a;       /* bf16 1.0 */
  __m512 x = _mm512_set1_ps(0.5f), y = _mm512_set1_ps(0.25f);

  double t0 = seconds();
  for (long i = 0; i < ITERS; ++i) {
#pragma GCC unroll 64
    for (int j = 0; j < CHAINS; ++j) dot[j] = _mm512_dpbf16_ps(dot[j], a, b);
    __asm__ volatile("" : "+v"(a), "+v"(b)); /* keep the operands opaque */
  }
  double t1 = seconds();
  for (long i = 0; i < ITERS; ++i) {
#pragma GCC unroll 64
    for (int j = 0; j < CHAINS; ++j) fma[j] = _mm512_fmadd_ps(fma[j], x, y);
    __asm__ volatile("" : "+v"(x), "+v"(y));
  }
  double t2 = seconds();

  float sink = 0.f;
  for (int j = 0; j < CHAINS; ++j) sink += _mm512_reduce_add_ps(dot[j]) + _mm512_reduce_add_ps(fma[j]);
  double n = (double)ITERS * CHAINS;
  double dot_ns = (t1 - t0) / n * 1e9, fma_ns = (t2 - t1) / n * 1e9;
  printf("vdpbf16ps zmm: %.3f ns/instr, %.1f MAC/ns\n", dot_ns, 32.0 / dot_ns);
  printf("vfmadd231ps zmm: %.3f ns/instr, %.1f MAC/ns\n", fma_ns, 16.0 / fma_ns);
  printf("bf16 dot / f32 FMA MAC rate: %.2fx (checksum %g)\n", (32.0 / dot_ns) / (16.0 / fma_ns), sink);
  return 0;
}
