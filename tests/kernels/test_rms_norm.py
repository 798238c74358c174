import numpy as np
import pytest

import reference
from rullama_py import ops

pytestmark = pytest.mark.pyodide


@pytest.mark.parametrize(
    "rows,n,weight,add_one",
    [(1, 640, True, False), (7, 256, True, True), (3, 1536, False, False), (4, 100, True, False)],
)
async def test_rms_norm(device, rows, n, weight, add_one):
    rng = np.random.default_rng(rows * 1000 + n)
    x = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32) if weight else None
    g = device.graph()
    out = device.tensor((rows, n))
    await ops.rms_norm(g, device.upload(x), device.upload(w) if weight else None, out, n=n, eps=1e-6, add_one=add_one)
    await device.run(g)
    got = await device.read(out)
    np.testing.assert_allclose(got, reference.rms_norm(x, w, 1e-6, add_one), rtol=1e-5, atol=1e-5)
