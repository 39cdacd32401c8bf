"""Ingest audio: self / partner tracks from any layout, voice activity, speak / listen / idle labels, quality.

Voice activity is silero-vad (its TorchScript model ships in the wheel); without it, lpm's energy VAD.
One mixed track is split into speakers with resemblyzer embeddings of short windows, clustered in two;
which cluster is the on-screen character is decided by the mouth: it moves when its owner speaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import uniform_filter1d

from lpm.errors import LpmError
from lpm.world import audio_analysis as aa

SAMPLE_RATE = 16000
# Labels follow the world's conventions (lpm.world.controller), so ingested and world clips agree.
LISTEN_HANGOVER_S = 0.8  # frames this long after the partner stops still count as listening
BACKCHANNEL_MAX_S = 0.9  # own voice runs shorter than this ("mm-hm") inside a listening span are not speaking
SPEECH_GAP_S = 0.4  # pauses shorter than this inside speech (between words) stay speech, as in an utterance
MIN_SPEECH_MS = 100  # silero: shorter detections are dropped (its default, 250, loses a word cut by the clip end)
# Channels whose voice activity agrees on more than this fraction of frames hold the same mix, not two voices.
SAME_MIX_AGREEMENT = 0.97
SAME_MIX_CORR = 0.9  # sample correlation above this: one mix copied to several channels
# Speaker separation of one mixed track.
EMBED_WINDOW_S = 1.0  # resemblyzer window (its own partials are 1.6 s; 1 s follows turns more closely)
EMBED_HOP_S = 0.25
KMEANS_ITERS = 20
ONE_SPEAKER_COS = 0.80  # without a face: cluster centroids more similar than this are one voice
MOUTH_SPEAKING_RATIO = 2.0  # a voice is the character's when the mouth moves this many times more than in silence
MOUTH_MOTION_FLOOR = 0.005  # mouth-opening change per frame (inter-ocular units) of a still, silent face
MIN_QUIET_FRAMES = 12  # silent frames needed to measure the still-face baseline
CLOSED_PERCENTILE = 10  # the mouth's closed opening: this percentile of its opening over the source
MOUTH_WINDOW_S = 0.5  # the mouth's evidence is averaged over this window around each frame
STRETCH_AGREEMENT = 0.7  # a voice stretch whose frames agree this much on the mouth takes one decision
CHANNEL_SWAP_MARGIN = 0.5  # channel 1 is taken as self only when the mouth speaks over this much more of it
MOUTH_OPEN_MIN = 0.03  # mean opening above closed (inter-ocular units) of a speaking mouth (speech: 0.05-0.2)
# resemblyzer's front end: 25 ms / 10 ms power mel, 40 bands (resemblyzer.hparams), Slaney mel scale.
MEL_WINDOW, MEL_HOP, MEL_BANDS = 400, 160, 40
VOLUME_DBFS = -30.0  # resemblyzer normalises utterances to this loudness
# Quality.
SILENT_PEAK_DBFS = -60.0  # a track whose peak stays below this is silent
CLIP_LEVEL = 0.999
CLIPPED_FRACTION = 0.001  # more samples than this at full scale: clipped audio


@dataclass
class AudioTracks:
    """The two voices of a source, 16 kHz mono each, and how they were obtained.

    Attributes:
        self_pcm: (N,) float32, the on-screen character's voice.
        partner_pcm: (N,) float32, the other party.
        method: "channels" | "sidecar" | "separated" | "single" | "none".
        self_channel: the input channel used as self, or -1.
    """

    self_pcm: np.ndarray
    partner_pcm: np.ndarray
    method: str
    self_channel: int = -1
    # Per-frame voice activity (bridged) of each track when already computed while choosing channels.
    self_active: np.ndarray | None = None
    partner_active: np.ndarray | None = None


@dataclass
class Labels:
    """Per-frame voice activity and states."""

    self_active: np.ndarray  # (F,) bool
    partner_active: np.ndarray  # (F,) bool
    states: list[str]  # speak | listen | idle
    vad: str  # "silero" | "energy"


# --- voice activity ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _silero():
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError:
        return None
    return load_silero_vad(), get_speech_timestamps


def vad_backend() -> str:
    """Which voice activity detector runs: "silero" or "energy" (lpm.world.audio_analysis)."""
    return "silero" if _silero() is not None else "energy"


def voice_activity(pcm: np.ndarray, num_frames: int, fps: int = 24, bridge: bool = True) -> np.ndarray:
    """Per-frame speech of one mono track.

    Args:
        pcm: (N,) float at 16 kHz.
        bridge: fill pauses shorter than SPEECH_GAP_S (utterance level); False keeps turn gaps for separation.
    Returns:
        (num_frames,) bool.
    """
    out = np.zeros(num_frames, bool)
    if pcm.size == 0 or np.max(np.abs(pcm)) < 10 ** (SILENT_PEAK_DBFS / 20):
        return out
    silero = _silero()
    if silero is None:
        act = aa.voice_activity(pcm, fps, SAMPLE_RATE)
        out[: min(num_frames, len(act))] = act[:num_frames]
        return out
    import torch

    model, get_speech_timestamps = silero
    with torch.no_grad():
        spans = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(pcm, np.float32)), model,
                                      sampling_rate=SAMPLE_RATE, min_speech_duration_ms=MIN_SPEECH_MS)
    spf = SAMPLE_RATE / fps
    for s in spans:
        out[int(round(s["start"] / spf)): int(math.ceil(s["end"] / spf))] = True
    if bridge:
        runs = aa.segments(out)
        for (_, e0), (s1, _) in zip(runs[:-1], runs[1:]):
            if s1 - e0 < SPEECH_GAP_S * fps:
                out[e0:s1] = True
    return out


def label_states(self_active: np.ndarray, partner_active: np.ndarray, fps: int = 24) -> list[str]:
    """speak where the character talks (short own runs mostly inside listening are backchannels), listen
    while the partner talks and LISTEN_HANGOVER_S after, idle otherwise."""
    listen = partner_active.copy()
    hang = int(LISTEN_HANGOVER_S * fps)
    for _, e in aa.segments(partner_active):
        listen[e: e + hang] = True
    speak = self_active.copy()
    for s, e in aa.segments(self_active):
        if e - s < BACKCHANNEL_MAX_S * fps and listen[s:e].mean() >= 0.5:
            speak[s:e] = False
    return [str(x) for x in np.where(speak, "speak", np.where(listen, "listen", "idle"))]


def labels(tracks: AudioTracks, num_frames: int, fps: int = 24) -> Labels:
    """Voice activity of both tracks and the per-frame states."""
    s = tracks.self_active if tracks.self_active is not None else voice_activity(tracks.self_pcm, num_frames, fps)
    p = tracks.partner_active
    if p is None:
        p = voice_activity(tracks.partner_pcm, num_frames, fps)
    return Labels(s, p, label_states(s, p, fps), vad_backend())


# --- which voice is whose ---------------------------------------------------------------------------------------


@dataclass
class Mouth:
    """What the face says about who is talking.

    Attributes:
        opening: (F,) mouth opening (inter-ocular units), 0 without a face.
        motion: (F,) |frame-to-frame change| of the opening averaged over ~0.2 s, 0 without a face.
    """

    opening: np.ndarray
    motion: np.ndarray


def mouth_evidence(mouth_open: np.ndarray, present: np.ndarray) -> Mouth:
    """Mouth opening and motion per frame from the face track."""
    m = np.where(present, mouth_open, 0.0).astype(np.float32)
    d = np.abs(np.diff(m, prepend=m[:1]))
    d[~present] = 0.0
    kernel = np.ones(5, np.float32) / 5  # ~0.2 s: syllable rate
    return Mouth(m, np.convolve(d, kernel, mode="same"))


def mouth_says_speaking(stretches: np.ndarray, any_voice: np.ndarray, mouth: Mouth, fps: int = 24) -> np.ndarray:
    """Per frame: True inside each run of ``stretches`` where the character's mouth speaks.

    Speaking = the mouth moves MOUTH_SPEAKING_RATIO times more than in silence AND stands open (a jittery
    mesh moves, but shut).

    Args:
        stretches: (F,) bool runs of one voice.
        any_voice: (F,) bool frames with any voice (the rest measure the still mouth).
    """
    quiet = ~any_voice & (mouth.motion > 0)
    baseline = max(float(mouth.motion[quiet].mean()) if quiet.sum() >= MIN_QUIET_FRAMES else 0.0, MOUTH_MOTION_FLOOR)
    seen = mouth.opening[mouth.opening > 0]
    closed = float(np.percentile(seen, CLOSED_PERCENTILE)) if seen.size else 0.0
    out = np.zeros(len(stretches), bool)
    # Frame by frame over a short window (a turn can follow the other voice without a pause) ...
    win = max(1, round(MOUTH_WINDOW_S * fps))
    local = (uniform_filter1d(mouth.motion, win) > MOUTH_SPEAKING_RATIO * baseline) & (
        uniform_filter1d(mouth.opening, win) - closed > MOUTH_OPEN_MIN)
    for a, b in aa.segments(stretches):
        # ... and a stretch the mouth mostly agrees on takes one decision (a long vowel or a pause is no turn).
        share = float(local[a:b].mean())
        out[a:b] = True if share >= STRETCH_AGREEMENT else False if share <= 1 - STRETCH_AGREEMENT else local[a:b]
    return out


def split_channels(audio: np.ndarray, partner_channel: str | int, num_frames: int, mouth: Mouth | None,
                   source: str = "input", fps: int = 24) -> AudioTracks:
    """Self and partner tracks from a (C, N) recording.

    Args:
        audio: (C, N) float32 at 16 kHz (C may be 0: no audio stream).
        partner_channel: "auto" (two distinct channels: pick by the mouth; else separate one mix by speaker),
            an int (that channel is the partner; the others are self) or "none" (everything is self).
        mouth: from ``mouth_evidence`` (None: channel 0 is self, the clip format's order).
    """
    c, n = audio.shape
    zeros = np.zeros(n, np.float32)
    if c == 0:
        return AudioTracks(zeros, zeros.copy(), "none")
    if partner_channel == "none":
        return AudioTracks(audio.mean(axis=0), zeros, "single")
    if isinstance(partner_channel, int) or (isinstance(partner_channel, str) and partner_channel.isdigit()):
        k = int(partner_channel)
        if not 0 <= k < c or c < 2:
            raise LpmError(f"{source}: --partner-channel {k} but the audio has {c} channel(s)")
        rest = [i for i in range(c) if i != k]
        return AudioTracks(audio[rest].mean(axis=0), audio[k].copy(), "channels", rest[0])
    if partner_channel != "auto":
        raise LpmError(f"{source}: --partner-channel must be auto, none or a channel index, got {partner_channel!r}")
    if c >= 2:
        acts = [voice_activity(audio[i], num_frames, fps) for i in range(2)]
        corr = np.corrcoef(audio[0], audio[1])[0, 1] if audio[0].std() > 0 and audio[1].std() > 0 else 1.0
        same = (acts[0] == acts[1]).mean() > SAME_MIX_AGREEMENT and corr > SAME_MIX_CORR
        if not same:
            # Channel 0 is the character's (the clip format's order) unless the mouth clearly says channel 1.
            self_ch = 0
            if mouth is not None:
                voice = acts[0] | acts[1]
                share = [mouth_says_speaking(a, voice, mouth, fps).sum() / max(1, a.sum()) for a in acts]
                self_ch = int(share[1] > share[0] + CHANNEL_SWAP_MARGIN)
            return AudioTracks(audio[self_ch].copy(), audio[1 - self_ch].copy(), "channels", self_ch,
                               acts[self_ch], acts[1 - self_ch])
    return separate(audio.mean(axis=0), num_frames, mouth, fps)


# --- speaker separation of one mix ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """(MEL_BANDS, MEL_WINDOW // 2 + 1) Slaney-scale, area-normalised triangular filters (resemblyzer's)."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return np.where(f < min_log_hz, f / f_sp, min_log_mel + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m < min_log_mel, m * f_sp, min_log_hz * np.exp(logstep * (m - min_log_mel)))

    fft_hz = np.linspace(0, SAMPLE_RATE / 2, MEL_WINDOW // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(SAMPLE_RATE / 2.0)), MEL_BANDS + 2))
    lower = (fft_hz[None, :] - pts[:-2, None]) / (pts[1:-1] - pts[:-2])[:, None]
    upper = (pts[2:, None] - fft_hz[None, :]) / (pts[2:] - pts[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return (weights * (2.0 / (pts[2:] - pts[:-2]))[:, None]).astype(np.float32)


def power_mel(pcm: np.ndarray) -> np.ndarray:
    """resemblyzer's input features: centred 25 ms Hann frames every 10 ms, power mel, 40 bands.

    Returns:
        (T, 40) float32.
    """
    x = np.pad(np.asarray(pcm, np.float32), (MEL_WINDOW // 2, MEL_WINDOW // 2))
    t = 1 + (len(x) - MEL_WINDOW) // MEL_HOP
    idx = np.arange(t)[:, None] * MEL_HOP + np.arange(MEL_WINDOW)[None, :]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(MEL_WINDOW + 1)[:-1], axis=1)) ** 2
    return (spec @ _mel_filters().T).astype(np.float32)


@lru_cache(maxsize=1)
def _encoder():
    from resemblyzer.voice_encoder import VoiceEncoder  # its pretrained weights ship in the wheel

    return VoiceEncoder("cpu", verbose=False)


def _kmeans2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spherical 2-means, seeded by the most dissimilar pair; returns (labels (n,), centroids (2, D))."""
    sim = x @ x.T
    i, j = np.unravel_index(np.argmin(sim), sim.shape)
    cent = x[[i, j]].copy()
    lab = np.zeros(len(x), np.int64)
    for _ in range(KMEANS_ITERS):
        lab = np.argmax(x @ cent.T, axis=1)
        for k in range(2):
            if (lab == k).any():
                v = x[lab == k].mean(axis=0)
                cent[k] = v / (np.linalg.norm(v) + 1e-9)
    return lab, cent


def _per_sample(per_frame: np.ndarray, n: int, fps: int) -> np.ndarray:
    """(F,) per-frame values -> (n,) per-sample values (sample i belongs to frame floor(i * fps / rate))."""
    idx = np.minimum(np.arange(n) * fps // SAMPLE_RATE, len(per_frame) - 1)
    return per_frame[idx]


def separate(mix: np.ndarray, num_frames: int, mouth: Mouth | None, fps: int = 24) -> AudioTracks:
    """Split one mixed voice track into self and partner by speaker embedding + two-way clustering.

    Windows of speech are embedded with resemblyzer; frames take the majority cluster of the windows over
    them. Overlapping speech goes to whichever voice dominates (a mask cannot unmix it).
    """
    import torch

    active = voice_activity(mix, num_frames, fps, bridge=False)
    n = len(mix)
    zeros = np.zeros(n, np.float32)
    if not active.any():
        return AudioTracks(mix.astype(np.float32), zeros, "separated")
    rms = np.sqrt(np.mean(mix[_per_sample(active, n, fps)] ** 2))
    gain = 10 ** (VOLUME_DBFS / 20) / max(float(rms), 1e-6)
    mel = power_mel(mix * gain)  # (T, 40), 100 steps per second
    win, hop = int(EMBED_WINDOW_S * 100), int(EMBED_HOP_S * 100)
    starts = [s for s in range(0, max(1, mel.shape[0] - win + 1), hop)
              if active[int(s / 100 * fps): int((s + win) / 100 * fps) + 1].mean() > 0.5]
    owner = np.zeros(num_frames, np.int64)
    one_voice = True  # too little speech to cluster: one voice
    if len(starts) >= 2:
        with torch.no_grad():
            emb = _encoder()(torch.from_numpy(np.stack([mel[s: s + win] for s in starts]))).numpy()  # (W, 256)
        lab, cent = _kmeans2(emb)
        votes = np.zeros((num_frames, 2), np.float32)
        for s, k in zip(starts, lab):
            votes[int(s / 100 * fps): int((s + win) / 100 * fps), k] += 1
        owner = np.argmax(votes, axis=1)
        one_voice = float(cent[0] @ cent[1]) > ONE_SPEAKER_COS
    self_frames = np.zeros(num_frames, bool)
    if mouth is not None:
        # The mouth decides each stretch of one voice. Clusters only split the speech where the voice changes;
        # similar (synthetic) voices can share a cluster or one voice split in two, and the mouth still tells.
        for k in range(2):
            self_frames |= mouth_says_speaking(active & (owner == k), active, mouth, fps)
    elif one_voice:
        self_frames = active.copy()  # one voice and no face to say otherwise: the character's
    else:
        k = int(np.argmax([(active & (owner == j)).sum() for j in range(2)]))  # the main voice is the character's
        self_frames = active & (owner == k)
    mask = _per_sample(self_frames, n, fps).astype(np.float32)
    return AudioTracks((mix * mask).astype(np.float32), (mix * (1 - mask)).astype(np.float32), "separated")


# --- quality ----------------------------------------------------------------------------------------------------


def is_silent(pcm: np.ndarray) -> bool:
    """No sample reaches SILENT_PEAK_DBFS."""
    return pcm.size == 0 or float(np.max(np.abs(pcm))) < 10 ** (SILENT_PEAK_DBFS / 20)


def is_clipped(pcm: np.ndarray) -> bool:
    """More than CLIPPED_FRACTION of the samples sit at full scale."""
    return pcm.size > 0 and float(np.mean(np.abs(pcm) >= CLIP_LEVEL)) > CLIPPED_FRACTION
