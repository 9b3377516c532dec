import json
from pathlib import Path

import pytest

from auralflow_dist import config as cfg
from auralflow_dist.errors import ConfigError


def test_defaults_match_the_seeds():
    m = cfg.ModelConfig().validate()
    assert (m.num_channels, m.hidden_channels, m.sample_length, m.sample_rate) == (1, 16, 3, 44100)
    assert (m.dropout_p, m.leak_factor, m.mask_act_fn) == (0.4, 0.0, "sigmoid")
    assert (m.num_fft, m.window_size, m.hop_length) == (1024, 1024, 512)
    assert (m.recurrent_depth, m.hidden_size, m.input_axis) == (3, 1024, 1)
    assert not m.normalize_input and not m.normalize_output
    assert m.num_fft_bins == 513 and m.num_frames == 259
    t = cfg.TrainerConfig().validate()
    d, o = t.data, t.optim
    assert (d.max_tracks, d.max_samples, d.batch_size, d.num_workers, d.pre_fetch) == (
        80,
        10000,
        32,
        8,
        4,
    )
    assert (o.max_epochs, o.lr, o.criterion, o.max_grad_norm, o.stop_patience) == (
        100,
        0.01,
        "si_sdr",
        1000,
        5,
    )
    assert (o.construction_loss, o.lr_lstm, o.init_scale, o.max_plateaus) == (
        "l2",
        1e-5,
        2.0**16,
        5,
    )
    assert (o.min_delta, o.reduction, o.alpha, o.beta) == (0.01, "mean", 0.2, 0.8)
    assert t.logging.image_freq == 5


def test_json_round_trip():
    m = cfg.from_dict(cfg.ModelConfig, {"model_type": "SpectrogramNetLSTM", "target": "bass"})
    again = cfg.from_json(cfg.ModelConfig, cfg.to_json(m))
    assert again == m


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"hidden_channels": -1}, "hidden_channels"),
        ({"mask_act_fn": "swish"}, "mask_act_fn"),
        ({"hop_length": 2048}, "hop_length"),
        ({"window_size": 4096}, "window_size"),
        ({"num_channels": 3}, "num_channels"),
        ({"model_type": "Demucs"}, "model_type"),
        ({"dropout_p": 1.5}, "dropout_p"),
        ({"input_axis": 2}, "input_axis"),
        ({"colour": "red"}, "colour"),
        ({"normalize_input": "maybe"}, "normalize_input"),
        ({"hidden_channels": 1.5}, "hidden_channels"),
        ({"target": "mixture"}, "target"),
    ],
)
def test_invalid_model_values_name_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        cfg.from_dict(cfg.ModelConfig, changes)
    assert err.value.field == field


def test_trainer_criterion_spellings_and_errors():
    assert cfg.from_dict(cfg.TrainerConfig, {"criterion": "si-sdr"}).optim.criterion == "si_sdr"
    assert cfg.from_dict(cfg.TrainerConfig, {"criterion": "SI_SDR"}).optim.criterion == "si_sdr"
    with pytest.raises(ConfigError, match="criterion"):
        cfg.from_dict(cfg.TrainerConfig, {"criterion": "hinge"})
    with pytest.raises(ConfigError, match="fidelity"):
        cfg.from_dict(cfg.TrainerConfig, {"criterion": "component", "fidelity": 0})
    ok = cfg.from_dict(
        cfg.TrainerConfig, {"criterion": "component", "fidelity": 0, "allow_no_fidelity": True}
    )
    assert ok.optim.fidelity == 0
    with pytest.raises(ConfigError, match="workers"):
        cfg.from_dict(cfg.TrainerConfig, {"workers_min": 3, "workers_max": 2})


def test_bool_strings_are_typed():
    assert cfg.from_dict(cfg.ModelConfig, {"normalize_input": "false"}).normalize_input is False
    assert cfg.from_dict(cfg.ModelConfig, {"normalize_input": "true"}).normalize_input is True


def test_bad_json_is_one_clear_error():
    with pytest.raises(ConfigError, match="not valid JSON"):
        cfg.from_json(cfg.ModelConfig, "{oops", source="model.json")
    with pytest.raises(ConfigError, match="JSON object"):
        cfg.from_json(cfg.ModelConfig, json.dumps([1, 2]))


DATA = Path(__file__).parent / "data"
# Flat trainer.json keys by section: what trainer_v0_*.json (written before the sections) hold.
SECTIONS = {
    "data": (
        "max_tracks max_samples batch_size num_workers persistent_workers pin_memory pre_fetch "
        "val_chunks shuffle_buffer silence_threshold_db augment_gain gain_range_db "
        "augment_channel_swap augment_remix decode_cpus"
    ),
    "optim": (
        "max_epochs lr lr_lstm criterion reduction alpha beta fidelity construction_loss "
        "best_perm allow_no_fidelity use_amp clip_grad max_grad_norm scale_grad init_scale "
        "stop_patience max_plateaus min_delta seed"
    ),
    "logging": (
        "tensorboard view_iter view_epoch view_weights view_grad view_norm play_estimate "
        "play_residual view_spec view_wav image_freq silent"
    ),
    "cluster": (
        "workers_min workers_max gpus_per_worker cpus_per_worker max_failures keep_checkpoints "
        "storage"
    ),
}


@pytest.mark.parametrize("name", ["trainer_v0_default.json", "trainer_v0_custom.json"])
def test_flat_trainer_json_loads_into_sections_and_round_trips(name):
    text = (DATA / name).read_text()
    flat = json.loads(text)
    trainer = cfg.from_json(cfg.TrainerConfig, text)
    for section, names in SECTIONS.items():
        for key in names.split():
            assert getattr(getattr(trainer, section), key) == flat[key], key
    assert sorted(k for names in SECTIONS.values() for k in names.split()) == sorted(flat)
    # Fields added since then take their defaults.
    assert json.loads(cfg.to_json(trainer)) == {**cfg.to_dict(cfg.TrainerConfig()), **flat}
    assert cfg.from_dict(cfg.TrainerConfig, cfg.to_dict(trainer)) == trainer


def test_replace_takes_flat_names_and_validates():
    base = cfg.TrainerConfig()
    changed = cfg.replace(base, lr=3e-3, batch_size="16", workers_max=4, storage="s3://b/c")
    assert (changed.optim.lr, changed.data.batch_size) == (3e-3, 16)
    assert (changed.cluster.workers_max, changed.cluster.storage) == (4, "s3://b/c")
    assert base.optim.lr == 0.01  # a copy
    with pytest.raises(ConfigError) as err:
        cfg.replace(base, optim={"lr": 1.0})
    assert err.value.field == "optim"  # sections are not keys: names stay flat
    with pytest.raises(ConfigError, match="lr: must be positive"):
        cfg.replace(base, lr=0)


def test_field_names_are_unique_across_sections():
    names = list(cfg.leaves(cfg.TrainerConfig))
    assert len(names) == len(set(names)) == 57


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"workers": 0}, "workers"),
        ({"padding": -1}, "padding"),
        ({"batch_size": 0}, "batch_size"),
        ({"gpus_per_worker": -0.5}, "gpus_per_worker"),
        ({"max_tracks": 0}, "max_tracks"),
        ({"session": ""}, "session"),
        ({"workers": "two"}, "workers"),
    ],
)
def test_eval_config_is_validated(changes, field):
    with pytest.raises(ConfigError) as err:
        cfg.from_dict(cfg.EvalConfig, {"session": "s", "dataset": "d", **changes})
    assert err.value.field == field


def test_eval_config_defaults_and_required_fields():
    config = cfg.from_dict(cfg.EvalConfig, {"session": "s", "dataset": "d"})
    assert (config.padding, config.batch_size) == (cfg.DEFAULT_PADDING, cfg.DEFAULT_BATCH_SIZE)
    assert (config.workers, config.max_tracks, config.csv_url) == (2, None, "s/eval.csv")
    with pytest.raises(ConfigError) as err:
        cfg.from_dict(cfg.EvalConfig, {"session": "s"})
    assert err.value.field == "dataset"


def test_workers_flag_text():
    assert cfg.parse_workers("3") == {"workers_min": 3, "workers_max": 3}
    assert cfg.parse_workers("2:8") == {"workers_min": 2, "workers_max": 8}
    with pytest.raises(ConfigError, match="MIN:MAX"):
        cfg.parse_workers("two")


# ----------------------------------------------------------------------------------------------
# Non-finite and absurd values (issue 16)


def _separate(**changes):
    from auralflow_dist.separate.config import SeparateConfig

    return cfg.from_dict(SeparateConfig, {"model": "m", "audio": "a", "save": "s", **changes})


REQUIRED = {
    cfg.ModelConfig: {},
    cfg.TrainerConfig: {},
    cfg.EvalConfig: {"session": "s", "dataset": "d"},
    cfg.SweepConfig: {"sweep_url": "s", "dataset_url": "d"},
}


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (cfg.ModelConfig, "sample_length", "inf"),
        (cfg.ModelConfig, "dropout_p", float("nan")),
        (cfg.TrainerConfig, "gpus_per_worker", "nan"),
        (cfg.TrainerConfig, "lr", float("inf")),
        (cfg.EvalConfig, "gpus_per_worker", float("nan")),
        (cfg.SweepConfig, "gpus_per_worker", "-inf"),
        (None, "duration", "inf"),
        (None, "block_seconds", float("inf")),
        (None, "gpus_per_worker", float("nan")),
        (None, "cpus_per_worker", "Infinity"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(cls, field, value):
    with pytest.raises(ConfigError, match=r"must be a finite number, got -?(nan|inf)$") as err:
        if cls is None:  # SeparateConfig
            _separate(**{field: value})
        else:
            cfg.from_dict(cls, {**REQUIRED[cls], field: value})
    assert err.value.field == field


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"sample_length": Infinity}', "sample_length"),
        ('{"dropout_p": NaN}', "dropout_p"),
        ('{"leak_factor": -Infinity}', "leak_factor"),
        ('{"hidden_size": Infinity}', "hidden_size"),
    ],
)
def test_json_infinity_and_nan_in_model_json_name_the_field(text, field):
    with pytest.raises(ConfigError) as err:
        cfg.from_json(cfg.ModelConfig, text, source="model.json")
    assert err.value.field == field
    assert "inf" in err.value.reason or "nan" in err.value.reason


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("hidden_size", 1e9, 16384),
        ("hidden_channels", 4096, 1024),
        ("recurrent_depth", 100, 16),
        ("num_fft", 2**20, 65536),
        ("sample_length", 3600.0, 60),
    ],
)
def test_model_sizes_that_would_allocate_absurd_memory_are_refused(field, value, bound):
    with pytest.raises(ConfigError, match=f"must be at most {bound}") as err:
        cfg.from_dict(cfg.ModelConfig, {field: value})
    assert err.value.field == field
    # The bound itself is accepted (construction only: no network is built).
    at_bound = {"num_fft": 65536, "window_size": 1024} if field == "num_fft" else {field: bound}
    assert getattr(cfg.from_dict(cfg.ModelConfig, at_bound), field) == bound


def test_separate_output_rate_must_be_a_real_audio_rate():
    assert _separate(sr=8000).sr == 8000 and _separate(sr=384000).sr == 384000
    for rate in (1000, 7999, 384001):
        with pytest.raises(ConfigError, match=r"8000\.\.384000 Hz") as err:
            _separate(sr=rate)
        assert err.value.field == "sr"


def test_progress_interval_and_memory_check_settings():
    trainer = cfg.from_dict(cfg.TrainerConfig, {"progress_interval": "5", "skip_memory_check": "1"})
    assert (trainer.logging.progress_interval, trainer.cluster.skip_memory_check) == (5.0, True)
    assert cfg.TrainerConfig().logging.progress_interval == 30.0
    with pytest.raises(ConfigError, match="progress_interval: must be positive"):
        cfg.from_dict(cfg.TrainerConfig, {"progress_interval": 0})
