import math

import pytest

from qwenopt.models import bundled_config
from qwenopt.roofline import kv_bytes_per_token, linear_params, roofline, weight_bytes_per_step

QWEN = bundled_config("qwen2.5-7b")


def test_linear_params_match_the_published_qwen25_7b_counts():
    body, head = linear_params(QWEN)
    # 28 layers x (q 3584^2 + k,v 2*3584*512 + o 3584^2 + mlp 3*3584*18944); lm_head 152064 x 3584
    assert body == 28 * (3584 * 3584 + 2 * 3584 * 512 + 3584 * 3584 + 3 * 3584 * 18944)
    assert head == 152064 * 3584
    assert body + head == pytest.approx(7.07e9, rel=1e-3)


def test_bytes_per_step_by_storage_width():
    body, head = linear_params(QWEN)
    assert weight_bytes_per_step(QWEN, "none", "bf16") == 2 * (body + head)  # ~14.1 GB
    awq = weight_bytes_per_step(QWEN, "awq", "bf16")
    assert awq == pytest.approx(body * (0.5 + 2 / 128 + 0.5 / 128) + 2 * head)  # ~4.5 GB
    assert 4.4e9 < awq < 4.6e9
    assert kv_bytes_per_token(QWEN, "bf16") == 2 * 28 * 4 * 128 * 2  # 57,344 bytes


def test_roofline_is_bandwidth_bound_at_batch_one():
    body, head = linear_params(QWEN)
    # batch 1, in 100, out 2 -> mean context 101 tokens of KV
    step_bytes = 2 * (body + head) + 101 * 57344
    expected = 1 / (step_bytes / 3000e9)
    assert roofline(QWEN, "none", "bf16", 1, 100, 2, mem_bw_gbs=3000, matmul_tflops=800) == pytest.approx(expected)


def test_roofline_is_compute_bound_at_large_batch_and_nan_without_probes():
    body, head = linear_params(QWEN)
    batch, context = 4096, 1.5  # in 1, out 1
    flops = batch * (2 * (body + head) + 4 * 28 * 28 * 128 * context)
    bytes_ = 2 * (body + head) + batch * context * 57344
    assert flops / 800e12 > bytes_ / 3000e9
    assert roofline(QWEN, "none", "bf16", batch, 1, 1, 3000, 800) == pytest.approx(batch / (flops / 800e12))
    assert math.isnan(roofline(QWEN, "none", "bf16", 1, 1, 1, math.nan, math.nan))
