"""Pieces both integer GEMM kernels share (int_gemm.py, int_gemm_tma.py): the grouped tile
order and the scale epilogue."""
import triton
import triton.language as tl


@triton.jit
def tile_coords(tile, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of output tile `tile` in grouped order: GROUP_M row-tiles share each weight
    column-tile while it is in L2."""
    per_group = GROUP_M * tiles_n
    first_m = (tile // per_group) * GROUP_M
    group_m = min(tiles_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % group_m, (tile % per_group) // group_m


@triton.jit
def store_scaled(acc, offs_m, offs_n, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, stride_om,
                 HAS_BIAS: tl.constexpr):
    """out[offs_m, offs_n] = (fp32(acc) * a_scale[m]) * w_scale[n] (+ bias[n]) in out's dtype, the
    reference's order of operations; rows / columns past M / N are not stored."""
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_scale = tl.load(a_scale_ptr + offs_m, mask=m_ok, other=0.0)
    w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0)
    y = acc.to(tl.float32) * a_scale[:, None]
    y = y * w_scale[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
