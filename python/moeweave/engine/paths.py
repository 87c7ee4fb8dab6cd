"""EdgeMoE's path statistics: on calibration text, how often each expert of MoE layer n is chosen
given the experts chosen at layers n-1 and n-2 (and, as a fallback, at n-1 alone), per token;
stored beside the store's manifest and used at run time to predict the next layer's experts.

File `path_statistics.json`: {"version": 1, "top_k": K, "layers": P, "first": [per position n:
{"a": {"e": count}}], "second": [per position n: {"a,b": {"e": count}}]} where a is an expert of
position n-1 and b of n-2 (positions count MoE layers only).
"""

import json
from collections import Counter, defaultdict
from pathlib import Path

import torch

FILE = "path_statistics.json"
VERSION = 1


class PathCounts:
    """Counts of (previous experts) -> next expert, per MoE layer position."""

    def __init__(self, layers: int, top_k: int):
        self.layers, self.top_k = layers, top_k
        self.first = [defaultdict(Counter) for _ in range(layers)]  # [n][a][e]
        self.second = [defaultdict(Counter) for _ in range(layers)]  # [n][(a, b)][e]

    def add_token(self, chosen: list[list[int]]) -> None:
        """chosen[n]: the experts one token was routed to at MoE layer position n."""
        for n in range(1, self.layers):
            for e in chosen[n]:
                for a in chosen[n - 1]:
                    self.first[n][a][e] += 1
                    if n >= 2:
                        for b in chosen[n - 2]:
                            self.second[n][(a, b)][e] += 1

    def save(self, directory: Path) -> None:
        body = {
            "version": VERSION,
            "top_k": self.top_k,
            "layers": self.layers,
            "first": [{str(a): dict(c) for a, c in sorted(level.items())} for level in self.first],
            "second": [{f"{a},{b}": dict(c) for (a, b), c in sorted(level.items())} for level in self.second],
        }
        (Path(directory) / FILE).write_text(json.dumps(body, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> "PathCounts":
        path = Path(directory) / FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; the path predictor needs path statistics profiled on calibration text "
                "(moeweave convert writes them)"
            )
        try:
            body = json.loads(path.read_text())
            if body.get("version") != VERSION:
                raise ValueError(f"version {body.get('version')!r}, expected {VERSION}")
            counts = cls(int(body["layers"]), int(body["top_k"]))
            for n, level in enumerate(body["first"]):
                for a, c in level.items():
                    counts.first[n][int(a)] = Counter({int(e): int(k) for e, k in c.items()})
            for n, level in enumerate(body["second"]):
                for key, c in level.items():
                    a, b = (int(v) for v in key.split(","))
                    counts.second[n][(a, b)] = Counter({int(e): int(k) for e, k in c.items()})
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not valid path statistics ({error})") from None
        return counts


class PathPredictor:
    """Predicts MoE layer n + 1's experts from the experts chosen at n and n - 1: each pair's
    conditional distribution (each normalised), summed; a token with no second-order counts falls
    back to the first-order ones. Per token at most top_k guesses, most probable first."""

    def __init__(self, counts: PathCounts):
        self.counts = counts
        self._chosen: dict[int, list[set[int]]] = {}  # position -> per-token experts of this step

    def __call__(self, position: int, x: torch.Tensor, topk_ids: torch.Tensor) -> list[int]:
        chosen = [set(row) for row in topk_ids.tolist()]  # per token
        self._chosen[position] = chosen
        target = position + 1
        if target >= self.counts.layers:
            return []
        previous = self._chosen.get(position - 1) if position >= 1 else None
        scores: Counter = Counter()
        for t, now in enumerate(chosen):
            token_scores: Counter = Counter()
            if previous is not None and len(previous) == len(chosen):
                for a in now:
                    for b in previous[t]:
                        _add_normalised(token_scores, self.counts.second[target].get((a, b)))
            if not token_scores:
                for a in now:
                    _add_normalised(token_scores, self.counts.first[target].get(a))
            for e, score in token_scores.most_common(self.counts.top_k):
                scores[e] += score
        return [e for e, _ in scores.most_common()]


def _add_normalised(scores: Counter, counts: Counter | None) -> None:
    if counts:
        total = sum(counts.values())
        for e, count in counts.items():
            scores[e] += count / total


@torch.no_grad()
def profile_paths(model, chunks: list[torch.Tensor], layers: list[int], top_k: int) -> PathCounts:
    """Runs the model over the calibration chunks, recording each token's experts per MoE layer."""
    blocks = [model.layers[layer].mlp for layer in layers]
    recorded: dict[int, list[list[int]]] = {}  # position -> per-token experts of the current chunk
    originals = [block.experts for block in blocks]
    for position, (block, provider) in enumerate(zip(blocks, originals, strict=True)):

        def record(layer, x, topk_ids, topk_weights, provider=provider, position=position):
            recorded[position] = topk_ids.tolist()
            return provider(layer, x, topk_ids, topk_weights)

        block.experts = record
    counts = PathCounts(len(blocks), top_k)
    try:
        for ids in chunks:
            model(ids)
            for t in range(ids.shape[1]):
                counts.add_token([recorded[p][t] for p in range(len(blocks))])
    finally:
        for block, provider in zip(blocks, originals, strict=True):
            block.experts = provider
    return counts
