"""The server's Prometheus metrics, in a registry of its own (one per app)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "moeweave_requests", "Requests finished, by model and outcome", ["model", "outcome"], registry=r
        )
        self.prompt_tokens = Counter(
            "moeweave_prompt_tokens", "Prompt tokens of finished requests", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "moeweave_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.waiting = Gauge("moeweave_queue_depth", "Requests waiting to join the batch", registry=r)
        self.running = Gauge("moeweave_running_requests", "Requests in the running batch", registry=r)
        self.adapter_loaded = Gauge(
            "moeweave_adapter_loaded", "1 while an adapter is loaded", ["adapter"], registry=r
        )
        self.adapter_bytes = Gauge(
            "moeweave_adapter_pool_bytes", "Memory the adapters' expert pools hold", registry=r
        )
        self.latency = Histogram("moeweave_request_latency_seconds", "Submission to last token", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.first_token = Histogram("moeweave_time_to_first_token_seconds", "Submission to first token", ["model"],
                                     buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.step_requests = Histogram("moeweave_step_batch_size", "Requests per model step",
                                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)  # fmt: skip
