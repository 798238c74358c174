"""Row selection and copies (shaders/select_row.wgsl; Kokoro's gather_rows.wgsl, broadcast_row.wgsl)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG


async def select_row(g: Graph, x: Tensor, step: Tensor, out: Tensor, *, n: int):
    """out[0] = x[step.n_tokens - 1] for rows of n: the last real token of a run (a prefill chunk)."""
    k = await g.device.kernel("select_row", N=n, WG=WG)
    g.add(k, [x, step, out], -(-n // WG))


# ---- Kokoro: the alignment as a gather, and a vector broadcast into a column window --------------------------------


def _count(t: Tensor) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _grid(threads: int) -> tuple[int, int]:
    n = max(1, -(-threads // WG))
    return (n, 1) if n <= 32768 else (32768, -(-n // 32768))


async def gather_rows(g: Graph, table: Tensor, index: Tensor, out: Tensor, length: Tensor, *, n: int,
                      table_stride: int | None = None, table_offset: int = 0, out_stride: int | None = None,
                      out_offset: int = 0):
    """out[f, out_offset : out_offset + n] = table[index[f], table_offset : table_offset + n] for f <
    length.n_tokens, zeros in those columns for the rows after (shaders/gather_rows.wgsl, one dispatch).

    Kokoro's alignment: en = d^T @ aln and asr = t_en @ aln, with aln [T, F] one-hot (aln[index[f], f] = 1, index
    the frame -> token map, repeat_interleave of the durations), are this gather of the token rows.
    table: f32, row r at table[r * table_stride + table_offset : ... + n] (table_stride default n; rows = how many
    fit); index: u32 [F_cap] (an index past the table reads its last row); out: f32, row f at
    out[f * out_stride + out_offset : ... + n] (out_stride default n), F_cap = index's size, out holding them;
    other columns untouched. length: the Step uniform whose n_tokens is the frame count F."""
    table_stride = n if table_stride is None else table_stride
    out_stride = n if out_stride is None else out_stride
    if n < 1 or table_offset + n > table_stride or out_offset + n > out_stride:
        raise ValueError(f"gather_rows: n={n}, table_stride={table_stride}, table_offset={table_offset}, "
                         f"out_stride={out_stride}, out_offset={out_offset}")
    table_rows = (_count(table) - table_offset - n) // table_stride + 1
    rows = _count(index)
    if table_rows < 1:
        raise ValueError(f"gather_rows: table of shape {table.shape} holds no row")
    if index.dtype != "uint32":
        raise ValueError(f"gather_rows: index dtype {index.dtype}, expected uint32")
    if (rows - 1) * out_stride + out_offset + n > _count(out):
        raise ValueError(f"gather_rows: output of shape {out.shape} holds fewer than {rows} rows of stride {out_stride}")
    k = await g.device.kernel("gather_rows", N=n, ROWS=rows, TOTAL=rows * n, TABLE_ROWS=table_rows,
                              TABLE_STRIDE=table_stride, TABLE_OFFSET=table_offset, OUT_STRIDE=out_stride,
                              OUT_OFFSET=out_offset, WG=WG)
    g.add(k, [table, index, length, out], _grid(rows * n))


async def broadcast_row(g: Graph, vec: Tensor, out: Tensor, *, n: int, rows: int, out_stride: int, out_offset: int,
                        vec_offset: int = 0):
    """out[r, out_offset + i] = vec[vec_offset + i] for every row r < rows and i < n (shaders/broadcast_row.wgsl,
    one dispatch); out: f32 with rows of out_stride values, other columns untouched; vec: f32. Kokoro: the style
    vector (s_pros, 128) in the last columns of the duration encoder's 640-wide rows."""
    if n < 1 or out_offset + n > out_stride:
        raise ValueError(f"broadcast_row: n={n}, out_stride={out_stride}, out_offset={out_offset}")
    if (rows - 1) * out_stride + out_offset + n > _count(out):
        raise ValueError(f"broadcast_row: output of shape {out.shape} holds fewer than {rows} rows of stride {out_stride}")
    if _count(vec) < vec_offset + n:
        raise ValueError(f"broadcast_row: vector of shape {vec.shape} holds fewer than {vec_offset} + {n} values")
    k = await g.device.kernel("broadcast_row", N=n, ROWS=rows, TOTAL=rows * n, OUT_STRIDE=out_stride,
                              OUT_OFFSET=out_offset, VEC_OFFSET=vec_offset, WG=WG)
    g.add(k, [vec, out], _grid(rows * n))
