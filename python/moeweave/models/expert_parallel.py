"""Expert parallelism over torch.distributed: each rank of a process group holds a contiguous
slice of every MoE layer's routed experts and a replica of everything else, and runs its own
sequences. Per MoE layer, each rank sends every (token, expert) assignment to the rank that
holds the expert, that rank runs its experts on what it received (one fused call), and the
weighted outputs go back the same way; both moves are one all_to_all each, over gloo (the
tensors exchanged are on the CPU, where moeweave's model execution runs). The communication
layer is torch.distributed's, never one of our own.

Collectives pair up by order, so every rank must call the same MoE layers the same number of
times. A rank whose sequences are finished while others still run calls
`serve_until_all_done()` (generation does so by itself): it keeps answering the others' layer
calls with no tokens of its own until every rank has done the same.

Dimension legend: T tokens, K experts per token, H hidden, N assignments sent, M received, W ranks.
"""

import itertools
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moeweave.models.experts import ExpertProvider

# The header every rank sends every other rank per layer call: how many assignments it sends it,
# whether the sender still has sequences of its own, and the MoE layer the sender is at.
_COUNT, _ACTIVE, _LAYER = range(3)


def expert_slice(num_experts: int, rank: int, world: int) -> range:
    """The experts rank `rank` of `world` holds: contiguous, the first num_experts % world ranks
    one more than the rest."""
    if not 0 < world <= num_experts:
        raise ValueError(f"expert parallelism: {world} ranks cannot split {num_experts} experts")
    base, extra = divmod(num_experts, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


@dataclass
class CommunicationStats:
    """What this rank's layer calls cost, summed since the provider was made (or reset)."""

    layer_calls: int = 0
    assignments: int = 0  # (token, expert) pairs of this rank's tokens
    sent_off_rank: int = 0  # of those, the ones whose expert another rank holds
    bytes_sent: int = 0  # payload this rank sent to other ranks: activations, outputs, metadata
    communication_seconds: float = 0.0  # inside the collectives (waiting on peers included)
    compute_seconds: float = 0.0  # this rank's expert computation


class ExpertParallel:
    """An ExpertProvider over a process group. `local` computes this rank's slice of the experts,
    addressed by local ids (expert e of the model is local id e - slice.start)."""

    def __init__(self, local: ExpertProvider, num_experts: int, moe_layers: list[int], hidden_size: int,
                 dtype: torch.dtype, group=None):  # fmt: skip
        self.local = local
        self.group = group
        self.hidden_size, self.dtype = hidden_size, dtype  # of the activations, which idle ranks receive
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.moe_layers = moe_layers
        self.held = expert_slice(num_experts, self.rank, self.world)
        # starts[r]: the first expert of rank r; starts[W] = num_experts.
        self.starts = torch.tensor([expert_slice(num_experts, r, self.world).start for r in range(self.world)]
                                   + [num_experts])  # fmt: skip
        self.stats = CommunicationStats()

    def __call__(self, layer, x, topk_ids, topk_weights):
        return self._layer_call(layer, x, topk_ids, topk_weights, active=True)[0]

    def serve_until_all_done(self) -> None:
        """Answer the other ranks' layer calls with no tokens of this rank's own, until every rank
        has called this: all leave together, at the same layer call."""
        for layer in itertools.cycle(self.moe_layers):
            empty = torch.empty(0, self.hidden_size, dtype=self.dtype)
            no_ids = torch.empty(0, 1, dtype=torch.long)
            _, any_active = self._layer_call(layer, empty, no_ids, no_ids.float(), active=False)
            if not any_active:
                return

    def _layer_call(self, layer, x, topk_ids, topk_weights, active: bool) -> tuple[torch.Tensor, bool]:
        tokens, k = topk_ids.shape
        flat_ids = topk_ids.reshape(-1).long()  # [T * K]
        owner = torch.bucketize(flat_ids, self.starts[1:], right=True)  # [T * K]
        order = torch.argsort(owner, stable=True)  # assignments grouped by the rank that runs them
        send_counts = torch.bincount(owner, minlength=self.world)
        header = torch.tensor([[int(n), int(active), layer] for n in send_counts.tolist()])  # [W, 3]
        started = time.perf_counter()
        peers = torch.empty_like(header)
        dist.all_to_all_single(peers, header, group=self.group)
        if not bool(peers[:, _ACTIVE].any()):
            self.stats.communication_seconds += time.perf_counter() - started
            return x, False
        if not bool((peers[:, _LAYER] == layer).all()):
            raise RuntimeError(
                f"expert parallelism: rank {self.rank} is at MoE layer {layer} while the ranks are at "
                f"layers {peers[:, _LAYER].tolist()}; every rank must run the same forwards"
            )
        sent, received = send_counts.tolist(), peers[:, _COUNT].tolist()
        # Metadata per assignment: the expert's local id on its rank and the routing weight.
        local_ids = flat_ids[order] - self.starts[owner[order]]
        meta = torch.stack([local_ids.float(), topk_weights.reshape(-1)[order].float()], dim=1)  # [N, 2]
        rows = x[order // k]  # [N, H]: a token goes once to each of its experts
        recv_rows = self._exchange(rows, sent, received)  # [M, H]
        recv_meta = self._exchange(meta, sent, received)  # [M, 2]
        self.stats.communication_seconds += time.perf_counter() - started

        # The experts run on fp32 copies of the rows and their outputs travel back in fp32, so a
        # token's sum is rounded to the model's dtype once, as inside the fused op: greedy output
        # then matches one process's.
        started = time.perf_counter()
        out = recv_rows.float()  # [M, H]
        if out.shape[0]:
            out = self.local(layer, out, recv_meta[:, :1].long(), recv_meta[:, 1:])  # weighted
        self.stats.compute_seconds += time.perf_counter() - started

        started = time.perf_counter()
        back = self._exchange(out, received, sent)  # [N, H] fp32, in `order`
        self.stats.communication_seconds += time.perf_counter() - started
        per_slot = torch.empty(tokens * k, x.shape[1], dtype=torch.float32)
        per_slot[order] = back
        self._count(tokens * k, sent, received, x.shape[1] * x.element_size(), x.shape[1] * 4)
        return per_slot.view(tokens, k, x.shape[1]).sum(1).to(x.dtype), True

    def _exchange(self, rows: torch.Tensor, sent: list[int], received: list[int]) -> torch.Tensor:
        """rows [sum(sent), ...] -> [sum(received), ...]: rows[split r of sent] go to rank r."""
        out = rows.new_empty(sum(received), *rows.shape[1:])
        dist.all_to_all_single(out, rows.contiguous(), received, sent, group=self.group)
        return out

    def _count(self, assignments: int, sent: list[int], received: list[int], row_bytes: int, out_bytes: int):
        stats = self.stats
        off_rank = sum(sent) - sent[self.rank]
        stats.layer_calls += 1
        stats.assignments += assignments
        stats.sent_off_rank += off_rank
        # Out: our rows and their metadata (two fp32 each); back: the outputs we computed for others.
        stats.bytes_sent += off_rank * (row_bytes + 8) + (sum(received) - received[self.rank]) * out_bytes
