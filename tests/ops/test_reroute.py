"""moeweave::reroute against its plain-torch twin (SPEC §2), under every ISA level of this CPU."""

import pytest
import torch

from moeweave.ops import reference, reroute


def _case(T, K, A, E, seed):
    generator = torch.Generator().manual_seed(seed)
    topk_ids = torch.randint(0, E, (T, K), generator=generator, dtype=torch.int32)
    tok_adapter = torch.randint(-1, A, (T,), generator=generator, dtype=torch.int32)
    remap = torch.arange(E, dtype=torch.int32).repeat(A + 1, 1)  # [A + 1, E], identity rows
    tuned = torch.rand(A, E, generator=generator) < 0.15  # ~15 % of experts per adapter, as ESFT
    remap[1:][tuned] = torch.arange(E, E + int(tuned.sum()), dtype=torch.int32)
    return topk_ids, tok_adapter, remap


@pytest.mark.parametrize("T", [0, 1, 7, 19, 111, 5000])
@pytest.mark.parametrize("K", [1, 2, 6, 8, 9, 17])
@pytest.mark.parametrize(("A", "E"), [(0, 1), (1, 7), (3, 64), (16, 160)])
def test_matches_reference(isa, T, K, A, E):
    topk_ids, tok_adapter, remap = _case(T, K, A, E, seed=T * 31 + K * 7 + E)
    out = reroute(topk_ids, tok_adapter, remap)
    assert out.dtype == torch.int32 and out.shape == (T, K)
    assert torch.equal(out, reference.reroute(topk_ids, tok_adapter, remap))


def test_base_tokens_keep_their_experts(isa):
    topk_ids, _, remap = _case(111, 6, 4, 64, seed=1)
    base = torch.full((111,), -1, dtype=torch.int32)
    assert torch.equal(reroute(topk_ids, base, remap), topk_ids)


def test_non_contiguous_ids():
    topk_ids, tok_adapter, remap = _case(19, 12, 3, 64, seed=2)
    strided = topk_ids[:, ::2]
    assert torch.equal(reroute(strided, tok_adapter, remap), reference.reroute(strided, tok_adapter, remap))


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("topk_ids", 64, r"'topk_ids' \[5, 2\] = 64 is outside \[0, 64\)"),
        ("topk_ids", -1, r"'topk_ids' \[5, 2\] = -1 is outside \[0, 64\)"),
        ("tok_adapter", 3, r"'tok_adapter' \[5\] = 3 is outside \[-1, 3\)"),
        ("tok_adapter", -2, r"'tok_adapter' \[5\] = -2 is outside \[-1, 3\)"),
    ],
)
def test_out_of_range_is_named(isa, where, value, message):
    topk_ids, tok_adapter, remap = _case(19, 4, 3, 64, seed=3)
    if where == "topk_ids":
        topk_ids[5, 2] = value
    else:
        tok_adapter[5] = value
    with pytest.raises(ValueError, match=message):
        reroute(topk_ids, tok_adapter, remap)
    with pytest.raises(ValueError):
        reference.reroute(topk_ids, tok_adapter, remap)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (
                torch.zeros(4, 2, dtype=torch.int64),
                torch.zeros(4, dtype=torch.int32),
                torch.zeros(1, 8, dtype=torch.int32),
            ),
            "'topk_ids' must be int32",
        ),
        (
            (
                torch.zeros(4, 2, dtype=torch.int32),
                torch.zeros(5, dtype=torch.int32),
                torch.zeros(1, 8, dtype=torch.int32),
            ),
            "'tok_adapter' must have one entry per token",
        ),
        (
            (
                torch.zeros(4, 2, dtype=torch.int32),
                torch.zeros(4, dtype=torch.int32),
                torch.zeros(0, 8, dtype=torch.int32),
            ),
            "'remap' must have at least the identity row",
        ),
        (
            (
                torch.zeros(8, dtype=torch.int32),
                torch.zeros(8, dtype=torch.int32),
                torch.zeros(1, 8, dtype=torch.int32),
            ),
            "'topk_ids' must have 2 dims",
        ),
    ],
)
def test_bad_input_is_named(args, message):
    with pytest.raises(ValueError, match=message):
        reroute(*args)


def test_opcheck():
    topk_ids, tok_adapter, remap = _case(19, 6, 3, 64, seed=4)
    torch.library.opcheck(torch.ops.moeweave.reroute.default, (topk_ids, tok_adapter, remap))


def test_torch_compile_fullgraph():
    topk_ids, tok_adapter, remap = _case(111, 6, 3, 64, seed=5)

    @torch.compile(fullgraph=True)
    def route(ids, adapters, table):
        return reroute(ids, adapters, table) * 2

    assert torch.equal(
        route(topk_ids, tok_adapter, remap), reference.reroute(topk_ids, tok_adapter, remap) * 2
    )
