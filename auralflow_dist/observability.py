"""Prometheus metrics of the jobs' drivers (prometheus-client).

Drivers expose ``/metrics`` on a port (``serve(port)``) or push to a Pushgateway
(``push(url, job)``). What runs inside Ray actors is visible through Ray's own metrics; the
series here are the job-level view a dashboard needs. Every name a dashboard may query is
listed in ``EXPORTED``, and a test holds the Grafana dashboards to that list.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server

REGISTRY = CollectorRegistry()

# Training (the Ray Train driver, updated once per epoch).
TRAIN_LOSS = Gauge(
    "auralflow_train_loss", "Mean training loss of the last epoch", ["session"], registry=REGISTRY
)
VAL_LOSS = Gauge(
    "auralflow_val_loss", "Validation loss of the last epoch", ["session"], registry=REGISTRY
)
VAL_SI_SDR = Gauge(
    "auralflow_val_si_sdr_db",
    "Validation SI-SDR of the estimate (dB)",
    ["session"],
    registry=REGISTRY,
)
VAL_SI_SDRI = Gauge(
    "auralflow_val_si_sdri_db",
    "Validation SI-SDR improvement over the mixture (dB)",
    ["session"],
    registry=REGISTRY,
)
TRAIN_SAMPLES_PER_S = Gauge(
    "auralflow_train_samples_per_second",
    "Training chunks per second over all workers",
    ["session"],
    registry=REGISTRY,
)
TRAIN_DATA_WAIT = Gauge(
    "auralflow_train_data_wait_ratio",
    "Share of step time spent waiting for data",
    ["session"],
    registry=REGISTRY,
)
TRAIN_EPOCH = Gauge("auralflow_train_epoch", "Epochs completed", ["session"], registry=REGISTRY)

# Bulk separation (the job driver).
SEP_FILES = Counter(
    "auralflow_separate_files", "Files processed, by outcome", ["job", "status"], registry=REGISTRY
)
SEP_AUDIO_SECONDS = Counter(
    "auralflow_separate_audio_seconds", "Seconds of audio separated", ["job"], registry=REGISTRY
)
SEP_REALTIME = Gauge(
    "auralflow_separate_realtime_factor",
    "Audio seconds separated per wall-clock second, whole job so far",
    ["job"],
    registry=REGISTRY,
)
SEP_PENDING = Gauge(
    "auralflow_separate_files_pending", "Files not yet processed", ["job"], registry=REGISTRY
)

# Names as Prometheus exposes them (counters gain ``_total``).
EXPORTED = frozenset(
    {
        "auralflow_train_loss",
        "auralflow_val_loss",
        "auralflow_val_si_sdr_db",
        "auralflow_val_si_sdri_db",
        "auralflow_train_samples_per_second",
        "auralflow_train_data_wait_ratio",
        "auralflow_train_epoch",
        "auralflow_separate_files_total",
        "auralflow_separate_audio_seconds_total",
        "auralflow_separate_realtime_factor",
        "auralflow_separate_files_pending",
    }
)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` for Prometheus to scrape (a daemon thread of this process)."""
    start_http_server(port, addr=addr, registry=REGISTRY)


def push(gateway: str, job: str) -> None:
    """Push the current values to a Pushgateway (for short jobs a scrape could miss)."""
    push_to_gateway(gateway, job=job, registry=REGISTRY)


def record_epoch(session: str, metrics: dict[str, float]) -> None:
    """Mirror one epoch's reported metrics into the training gauges."""
    for gauge, key in (
        (TRAIN_LOSS, "train_loss"),
        (VAL_LOSS, "val_loss"),
        (VAL_SI_SDR, "val_si_sdr"),
        (VAL_SI_SDRI, "val_si_sdri"),
        (TRAIN_SAMPLES_PER_S, "samples_per_s"),
        (TRAIN_DATA_WAIT, "data_wait_share"),
        (TRAIN_EPOCH, "epoch"),
    ):
        if key in metrics:
            gauge.labels(session=session).set(float(metrics[key]))
