"""Separation metrics as batched tensor code, so validation and evaluation score on the GPU.

Two families that must never share a name:

- `si_sdr`, `si_snr`, `sdr`: whole-signal ratios over the last axis, differentiable (training losses
  and quick validation numbers).
- `bsseval_sdr`: museval's BSSEval v4 SDR as MUSDB reports it (framewise, median over frames). Its
  SDR needs no distortion filter (museval's filters change only ISR/SIR/SAR), which is why it can be
  a cheap tensor computation. mir_eval, fast_bss_eval and torchmetrics' `signal_distortion_ratio`
  compute the older filtered SDR, several dB higher: not comparable.

`eps` keeps every value finite on silent signals; it is added to both energies of a ratio, so two
silent signals score 0 dB, and it shifts scores of audible signals by far less than 0.01 dB.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def float32_at_least(tensor: Tensor) -> Tensor:
    """`tensor` as float32, or float64 if it is already: half precision overflows energy sums."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _energy_db(signal: Tensor, error: Tensor, eps: float) -> Tensor:
    return 10 * torch.log10((signal + eps) / (error + eps))


def si_sdr(
    estimate: Tensor, reference: Tensor, eps: float = 1e-8, zero_mean: bool = True
) -> Tensor:
    """Scale-invariant SDR in dB (Le Roux et al., 2019) over the last axis; shape `shape[:-1]`.

    The estimate is projected on the reference, so gain errors cost nothing. Average the result
    over channels yourself, or flatten them into the last axis to score them jointly.
    Agrees with torchmetrics' `scale_invariant_signal_distortion_ratio` (same `zero_mean`), and
    exactly so on silent signals when `eps` is `torch.finfo(torch.float32).eps`:
    silent reference and estimate -> 0 dB; silent estimate of an audible reference -> 0 dB (the
    projection of nothing is nothing, so there is no error either); audible estimate of a silent
    reference -> 10 log10(eps / (energy + eps)), strongly negative, so a loss pushes it to silence.
    """
    estimate = float32_at_least(estimate)
    reference = float32_at_least(reference)
    if zero_mean:
        estimate = estimate - estimate.mean(-1, keepdim=True)
        reference = reference - reference.mean(-1, keepdim=True)
    scale = ((estimate * reference).sum(-1, keepdim=True) + eps) / (
        reference.square().sum(-1, keepdim=True) + eps
    )
    projection = scale * reference
    return _energy_db(projection.square().sum(-1), (estimate - projection).square().sum(-1), eps)


def si_snr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """SI-SNR: the name speech separation uses for zero-mean SI-SDR (torchmetrics' `si_snr`)."""
    return si_sdr(estimate, reference, eps=eps, zero_mean=True)


def sdr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Energy-ratio SDR in dB over the last axis, no projection: 10 log10 |r|^2 / |r - e|^2.

    This is the MUSDB/SiSEC "new" SDR taken over the whole signal rather than per frame; flatten
    channels into the last axis to pool them as BSSEval does. A silent estimate scores 0 dB.
    """
    estimate = float32_at_least(estimate)
    reference = float32_at_least(reference)
    return _energy_db(reference.square().sum(-1), (reference - estimate).square().sum(-1), eps)


def _nanmedian(values: Tensor) -> Tensor:
    """Median over the last axis ignoring NaN, averaging the middle pair like `np.nanmedian`
    (`torch.nanmedian` returns the lower one); NaN where every value is NaN."""
    valid = ~values.isnan()
    count = valid.sum(-1, keepdim=True)
    ordered = torch.where(valid, values, torch.inf).sort(-1).values
    lower = ordered.gather(-1, ((count - 1) // 2).clamp(min=0))
    upper = ordered.gather(-1, (count // 2).clamp(max=values.shape[-1] - 1))
    return torch.where(count > 0, (lower + upper) / 2, torch.nan).squeeze(-1)


def bsseval_sdr(
    estimate: Tensor,
    reference: Tensor,
    sample_rate: int,
    window: float = 1.0,
    hop: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """museval's BSSEval v4 SDR (`museval.evaluate(..., win=sr, hop=sr)`, median over frames).

    Shapes `(..., sources, channels, samples)`, or `(channels, samples)` for one source; returns
    `shape[:-2]`. Axis -3 holds the sources of one track, evaluated together as MUSDB does: a
    frame where any source's reference or estimate is silent (its channel sum is zero throughout,
    museval's test) is skipped for every source. Give independent items a sources axis of size 1.
    Like museval, the estimate is zero-padded or cut to the reference length, frames are
    `int(window * sample_rate)` samples every `int(hop * sample_rate)`, a trailing partial frame
    is dropped, and a signal shorter than one window is one frame. An item with no frame left to
    score is NaN (museval refuses such input), which `np.nanmedian` over tracks skips.
    """
    estimate = float32_at_least(estimate)
    reference = float32_at_least(reference)
    if reference.ndim < 2 or estimate.shape[:-1] != reference.shape[:-1]:
        raise ValueError(
            f"bsseval_sdr needs matching (..., channels, samples) inputs, got "
            f"{tuple(estimate.shape)} and {tuple(reference.shape)}"
        )
    length = reference.shape[-1]
    estimate = F.pad(estimate, (0, length - estimate.shape[-1]))
    frame = min(int(window * sample_rate), length)
    step = int(hop * sample_rate)
    if frame < 1 or step < 1:
        raise ValueError(
            f"bsseval_sdr window and hop must span at least one sample at {sample_rate} Hz"
        )
    one_source = reference.ndim == 2
    if one_source:
        estimate, reference = estimate.unsqueeze(0), reference.unsqueeze(0)
    # (..., sources, channels, frames, frame samples)
    ref_frames = reference.unfold(-1, frame, step)
    est_frames = estimate.unfold(-1, frame, step)
    scores = _energy_db(
        ref_frames.square().sum((-3, -1)), (ref_frames - est_frames).square().sum((-3, -1)), eps
    )
    silent = (ref_frames.sum(-3) == 0).all(-1) | (est_frames.sum(-3) == 0).all(-1)
    scores = scores.masked_fill(silent.any(-2, keepdim=True), torch.nan)
    medians = _nanmedian(scores)
    return medians.squeeze(0) if one_source else medians
