import json

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
    assert (t.max_tracks, t.max_samples, t.batch_size, t.num_workers, t.pre_fetch) == (
        80,
        10000,
        32,
        8,
        4,
    )
    assert (t.max_epochs, t.lr, t.criterion, t.max_grad_norm, t.stop_patience) == (
        100,
        0.01,
        "si_sdr",
        1000,
        5,
    )
    assert (t.construction_loss, t.lr_lstm, t.init_scale, t.max_plateaus) == (
        "l2",
        1e-5,
        2.0**16,
        5,
    )
    assert (t.min_delta, t.reduction, t.alpha, t.beta, t.image_freq) == (0.01, "mean", 0.2, 0.8, 5)


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
    assert cfg.from_dict(cfg.TrainerConfig, {"criterion": "si-sdr"}).criterion == "si_sdr"
    assert cfg.from_dict(cfg.TrainerConfig, {"criterion": "SI_SDR"}).criterion == "si_sdr"
    with pytest.raises(ConfigError, match="criterion"):
        cfg.from_dict(cfg.TrainerConfig, {"criterion": "hinge"})
    with pytest.raises(ConfigError, match="fidelity"):
        cfg.from_dict(cfg.TrainerConfig, {"criterion": "component", "fidelity": 0})
    ok = cfg.from_dict(
        cfg.TrainerConfig, {"criterion": "component", "fidelity": 0, "allow_no_fidelity": True}
    )
    assert ok.fidelity == 0
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
