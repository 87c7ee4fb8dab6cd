"""The CUDA expert pool (device virtual memory mapped per slot) on a GPU: experts put into it
read back exactly, the fused MoE op over a table whose slots point into it equals the reference
over the source experts, addresses stay put, and memory is mapped only for slots in use.
Skipped where no GPU is present."""

import pytest
import torch

from moeweave.adapters.pool import DeviceExpertPool, PoolFull, slot_bytes
from moeweave.ops import moe_experts, reference
from moeweave.quant import ExpertTable, quantize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HIDDEN, INTER = 128, 96


def expert(seed: int, bits: int = 4):
    g = torch.Generator().manual_seed(seed)
    shapes = ((INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER))
    return tuple(quantize(torch.randn(*shape, generator=g), bits=bits, group_size=64) for shape in shapes)


def test_slots_map_on_put_and_unmap_on_release():
    experts = [expert(seed) for seed in range(3)]
    pool = DeviceExpertPool(slot_bytes(experts[0]), capacity=2, device="cuda")
    address = pool.address
    first, placed = pool.put(experts[0])
    assert pool.resident_bytes() == pool.stride and pool.stride % (2 << 20) == 0
    for ours, source in zip(placed, experts[0], strict=True):
        assert ours.packed.is_cuda and torch.equal(ours.packed.cpu(), source.packed)
        assert torch.equal(ours.scales.cpu(), source.scales)
    pool.put(experts[1])
    with pytest.raises(PoolFull):
        pool.put(experts[2])
    pool.release(first)
    assert pool.resident_bytes() == pool.stride
    again, placed = pool.put(experts[2])
    assert again == first and pool.address == address
    assert torch.equal(placed[2].packed.cpu(), experts[2][2].packed)


def test_the_fused_op_reads_experts_in_the_pool():
    experts = [expert(seed) for seed in range(4)]
    pool = DeviceExpertPool(slot_bytes(experts[0]), capacity=4, device="cuda")
    table = ExpertTable.empty(4, HIDDEN, INTER, "cuda")
    for e, source in enumerate(experts):
        _, placed = pool.put(source)
        table.set_slot(e, placed)
    expected_table = ExpertTable([tuple(w.to("cuda") for w in source) for source in experts])
    g = torch.Generator().manual_seed(9)
    x = torch.randn(7, HIDDEN, generator=g).cuda()
    ids = torch.randint(0, 4, (7, 2), generator=g, dtype=torch.int32).cuda()
    weights = torch.rand(7, 2, generator=g).cuda()
    torch.testing.assert_close(
        moe_experts(x, ids, weights, table),
        reference.moe_experts(x, ids, weights, expected_table),
        rtol=1e-3,
        atol=1e-3,
    )
