"""Every fixed string, list and number of ACE-Step 1.5 that callers or prompts depend on, in one place.

Strings that the text encoder sees (templates, instructions) must match the original byte for byte; the lists
mirror ``acestep/constants.py`` of ACE-Step 1.5.
"""
from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------------------
# Audio / latent geometry
# ---------------------------------------------------------------------------------------------------------------

SAMPLE_RATE = 48000
LATENT_RATE = 25  # latent frames per second (VAE hop 1920 samples)

# ---------------------------------------------------------------------------------------------------------------
# Prompt templates (newlines are load-bearing; "<|endoftext|>" is tokenized as the special token ENDOFTEXT_ID)
# ---------------------------------------------------------------------------------------------------------------

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 151643  # also the pad id the original uses for right padding

SFT_GEN_PROMPT = "# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}<|endoftext|>\n"
LYRICS_PROMPT = "# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"
METAS_TEMPLATE = "- bpm: {bpm}\n- timesignature: {timesignature}\n- keyscale: {keyscale}\n- duration: {duration}\n"
META_MISSING = "N/A"
DEFAULT_METAS_DURATION = 30  # seconds written into the metas when no duration is known (whatever the real length)

TEXT_MAX_TOKENS = 256  # caption prompt truncation
LYRIC_MAX_TOKENS = 2048  # lyrics prompt truncation

# ---------------------------------------------------------------------------------------------------------------
# Task instructions and tracks (the task table itself lives in tasks.py)
# ---------------------------------------------------------------------------------------------------------------

TASK_INSTRUCTIONS = {
    "text2music": "Fill the audio semantic mask based on the given conditions:",
    "repaint": "Repaint the mask area based on the given conditions:",
    "cover": "Generate audio semantic tokens based on the given conditions:",
    "extract": "Extract the {TRACK_NAME} track from the audio:",
    "extract_default": "Extract the track from the audio:",
    "lego": "Generate the {TRACK_NAME} track based on the audio context:",
    "lego_default": "Generate the track based on the audio context:",
    "complete": "Complete the input track with {TRACK_CLASSES}:",
    "complete_default": "Complete the input track:",
}
TRACK_CLASSES_SEPARATOR = " | "

TRACK_NAMES = (
    "woodwinds", "brass", "fx", "synth", "strings", "percussion",
    "keyboard", "guitar", "bass", "drums", "backing_vocals", "vocals",
)

# ---------------------------------------------------------------------------------------------------------------
# Metadata vocabularies and ranges
# ---------------------------------------------------------------------------------------------------------------

# 50 language codes + "unknown" (51 entries), same order as the original.
VALID_LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en",
    "es", "fa", "fi", "fr", "he", "hi", "hr", "ht", "hu", "id",
    "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no",
    "pa", "pl", "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw",
    "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)

KEYSCALE_NOTES = ("A", "B", "C", "D", "E", "F", "G")
KEYSCALE_ACCIDENTALS = ("", "#", "b", "♯", "♭")  # natural, ASCII sharp/flat, Unicode sharp/flat
KEYSCALE_MODES = ("major", "minor")
# 7 notes x 5 accidentals x 2 modes = 70 (the original keeps them in a set; a tuple gives a stable order).
KEYSCALES = tuple(f"{n}{a} {m}" for n in KEYSCALE_NOTES for a in KEYSCALE_ACCIDENTALS for m in KEYSCALE_MODES)

TIME_SIGNATURES = ("2", "3", "4", "6")  # numerators: 2/4, 3/4, 4/4, 6/8
BPM_MIN, BPM_MAX = 30, 300
DURATION_MIN, DURATION_MAX = 10, 600  # seconds: a new song, and any source or reference recording
TIME_SIGNATURE_FRACTIONS = {"2/4": "2", "3/4": "3", "4/4": "4", "6/8": "6"}  # accepted and written as the numerator

# ---------------------------------------------------------------------------------------------------------------
# Inputs: limits and choices (checks.py and tasks.py check them; the nodes and the command line show them)
# ---------------------------------------------------------------------------------------------------------------

SEED_MAX = 2**64 - 1  # seeds are 0 … 2^64 − 1, as ComfyUI's seed widget
MAX_BATCH_SIZE = 8  # songs per generation
STEPS_MIN, STEPS_MAX = 1, 200
SHIFT_MIN, SHIFT_MAX = 0.1, 10.0
GUIDANCE_MIN, GUIDANCE_MAX = 1.0, 30.0  # 1.0 = no guidance
APG_MOMENTUM_MIN, APG_MOMENTUM_MAX = -1.0, 1.0
APG_MOMENTUM = -0.75  # the original's APG momentum and norm threshold
APG_NORM_THRESHOLD = 2.5
APG_NORM_THRESHOLD_MAX = 100.0
VELOCITY_NORM_THRESHOLD_MAX = 100.0
TILE_FRAMES_MIN, TILE_FRAMES_MAX = 16, 4096  # latent frames per VAE decode tile
DEFAULT_TILE_FRAMES = 512
DEFAULT_DURATION = 120.0  # seconds of a new song when none is given (the original's fallback)
DEFAULT_EXTEND_SECONDS = 30.0  # new music added by extend when no window end is given
EXTEND_SECONDS_MIN = 1.0  # extend adds at least this much new music …
EXTEND_OVERLAP_MAX = 60.0  # … and regenerates at most this much of the source next to the join
MIN_WINDOW_SECONDS = 1 / LATENT_RATE  # a window spans at least one latent frame
MIN_LATENT_FRAMES = 128  # the original never generates fewer than 128 frames (5.12 s)
CODES_PER_SECOND = 5  # the 5 Hz semantic audio codes
CODEBOOK_SIZE = 64000  # valid code values are 0 … 63999
MAX_AUDIO_CODES = DURATION_MAX * CODES_PER_SECOND
REFERENCE_SECONDS = 30  # the timbre reference fed to the VAE: 3 segments of 10 s
REFERENCE_SEGMENT_SECONDS = 10
REPAINT_MODES = ("balanced", "conservative", "aggressive")  # how a repainted window meets the kept audio
EXTEND_DIRECTIONS = ("after the end", "before the start")
GUIDANCE_METHODS = ("apg", "adg")
DTYPES = ("auto", "bf16", "fp16", "fp32")

# ---------------------------------------------------------------------------------------------------------------
# Qwen3-Embedding-0.6B (the caption/lyrics text encoder) facts not recoverable from tensor shapes
# ---------------------------------------------------------------------------------------------------------------

QWEN3_ROPE_THETA = 1_000_000.0
QWEN3_RMS_NORM_EPS = 1e-6
QWEN3_MAX_POSITION_EMBEDDINGS = 32768

# Where the text-encoder weights live in the supported single-file layouts, tried in this order; the official
# HF folder `Qwen3-Embedding-0.6B/` has the bare transformers names (prefix "").
TEXT_ENCODER_PREFIXES = (
    "text_encoders.qwen3_06b.transformer.model.",  # ComfyUI all-in-one checkpoint
    "model.",  # Comfy-Org qwen_0.6b_ace15.safetensors
    "",  # Qwen3-Embedding-0.6B/model.safetensors
)

# ---------------------------------------------------------------------------------------------------------------
# Per-variant sampling defaults
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingDefaults:
    steps: int
    shift: float
    guidance: float


# These follow the official Gradio UI, which is what users compare against, as of upstream 6d467e4 (2026-06-26):
# steps and shift from acestep/ui/gradio/events/generation/model_config.py `get_ui_control_config` (turbo 8 steps,
# shift 3.0; SFT 50 steps (8b58da1); base 32 steps; non-turbo shift 3.0: e56de7b set 1.0 and 953d729 (#1208,
# "Fix an unexpected change") put 3.0 back twelve minutes later); guidance 7.0 from the guidance slider
# (acestep/ui/gradio/interfaces/generation_advanced_dit_controls.py), forced to 1.0 for turbo by the handler.
# XL variants are matched by the same path tokens. Upstream's Python API (`GenerationParams`) differs: 8 steps,
# shift 1.0, guidance 7.0 for every variant; base/sft `generate_audio` itself defaults to 30 steps, shift 1.0.
# The per-variant DCW switch is DCW_DEFAULTS (end of this file).
VARIANT_DEFAULTS = {
    "turbo": SamplingDefaults(steps=8, shift=3.0, guidance=1.0),
    "xl_turbo": SamplingDefaults(steps=8, shift=3.0, guidance=1.0),
    "base": SamplingDefaults(steps=32, shift=3.0, guidance=7.0),
    "xl_base": SamplingDefaults(steps=32, shift=3.0, guidance=7.0),
    "sft": SamplingDefaults(steps=50, shift=3.0, guidance=7.0),
    "xl_sft": SamplingDefaults(steps=50, shift=3.0, guidance=7.0),
}

# ---------------------------------------------------------------------------------------------------------------
# Newest upstream sampler options (upstream ACE-Step-1.5 at 6d467e4, 2026-06-26): DCW, samplers, turbo steps
# ---------------------------------------------------------------------------------------------------------------

SAMPLER_MODES = ("euler", "heun")  # upstream `sampler_mode`: first order, or the trapezoid with a 2nd DiT call
INFER_METHODS = ("ode", "sde")  # upstream `infer_method`: deterministic steps, or x0 estimate + fresh noise
VAE_ENCODE_MODES = ("sample", "mean")  # source audio → latents: a posterior draw (upstream, always) or its mean
FLOW_EDIT_MAX_AVG = 16  # noise draws averaged per flow-edit step (each costs two DiT calls)

# Turbo takes 1..TURBO_MAX_STEPS steps on t_i = s·u/(1+(s−1)u), u = 1 − i/N (the model function's limit); the
# official app's generation handler clamps turbo to TURBO_APP_MAX_STEPS (a request for 12 runs 8 steps).
TURBO_MAX_STEPS = 20
TURBO_APP_MAX_STEPS = 8

DCW_MODES = ("low", "high", "double", "pix")


@dataclass(frozen=True)
class DcwSettings:
    """Differential Correction in Wavelet domain (arXiv 2604.16044) as the sampler applies it after each step.

    ``scaler`` drives the low band (``low``, ``double``), the high band (``high``) or the latent-space
    correction (``pix``); ``high_scaler`` drives the high band in ``double`` only. Upstream's wavelet option
    (any PyWavelets basis) is not offered: Haar is the default and the only basis implemented here.
    """
    enabled: bool = True
    mode: str = "double"
    scaler: float = 0.05
    high_scaler: float = 0.02

    def __post_init__(self):
        # Built from SamplerSettings' checked dcw_* fields (schedule.resolve_dcw) or the app's defaults here.
        assert self.mode in DCW_MODES, self.mode
        assert all(isinstance(v, (int, float)) and v == v for v in (self.scaler, self.high_scaler)), self

    @property
    def active(self) -> bool:
        """Whether the correction changes anything (upstream's ``DCWCorrector.is_active``)."""
        if not self.enabled:
            return False
        if self.mode == "double":
            return self.scaler != 0.0 or self.high_scaler != 0.0
        return self.scaler != 0.0


# What the official Gradio app sets per variant (acestep/ui/gradio/events/generation/model_config.py
# `get_ui_control_config`, e56de7b #1207: DCW on for turbo, off for base/SFT; mode/scalers from
# acestep/ui/gradio/events/dcw_defaults.py). Upstream's Python API (`GenerationParams`) has DCW on for every
# variant with the same double / 0.05 / 0.02.
DCW_DEFAULTS = {
    "turbo": DcwSettings(enabled=True),
    "xl_turbo": DcwSettings(enabled=True),
    "base": DcwSettings(enabled=False),
    "xl_base": DcwSettings(enabled=False),
    "sft": DcwSettings(enabled=False),
    "xl_sft": DcwSettings(enabled=False),
}


@dataclass(frozen=True)
class Variant:
    """A model variant as every rule sees it: its kind (turbo, base or sft), whether it is the XL size, its
    sampling defaults and the official app's DCW switch (asked instead of reading suffixes of the name)."""
    name: str
    kind: str
    xl: bool
    defaults: SamplingDefaults
    dcw: DcwSettings

    @property
    def turbo(self) -> bool:
        return self.kind == "turbo"


VARIANTS = {name: Variant(name, name.removeprefix("xl_"), name.startswith("xl_"), VARIANT_DEFAULTS[name],
                          DCW_DEFAULTS[name]) for name in VARIANT_DEFAULTS}
# With the LM's "thinking" on, the app switches mode/scalers to these (dcw_defaults.py THINK_DCW_DEFAULTS,
# b3a4561); the on/off switch stays the variant's.
DCW_THINK_MODE, DCW_THINK_SCALER, DCW_THINK_HIGH_SCALER = "double", 0.02, 0.06

# ---------------------------------------------------------------------------------------------------------------
# LoRA / LoKr / DoRA adapter files (names as the official trainer, PEFT, LyCORIS, ComfyUI and diffusers write them)
# ---------------------------------------------------------------------------------------------------------------

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_ADAPTER_SUBFOLDER = "adapter"  # the official trainer saves <output>/adapter/
LOKR_WEIGHTS_FILE = "lokr_weights.safetensors"
PEFT_DEFAULT_R, PEFT_DEFAULT_ALPHA = 8, 8  # LoraConfig's defaults, for a config that leaves them out
# PEFT options whose effect is not a weight change the pack can apply: refused, never ignored.
PEFT_UNSUPPORTED_OPTIONS = ("lora_bias", "modules_to_save", "layer_replication", "alora_invocation_tokens",
                            "target_parameters", "trainable_token_indices", "use_bdlora")
PICKLE_EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt")  # never loaded (unpickling can run code)
# The largest |scale| (alpha / rank; PEFT rsLoRA alpha / sqrt(rank)) an adapter file may ask for. Trained adapters
# use about 0.01 to 16 (alpha = rank gives 1; the official LoKr trainer's defaults 2); a scale in the thousands
# swamps the weights it changes, so it comes only from a damaged file or a wrong alpha.
ADAPTER_SCALE_MAX = 1000.0

# What comes before the module name in an adapter key, tried in this order ("" = a bare module name). A module
# name after a prefix is either a full model name (decoder.layers.0.self_attn.q_proj) or one relative to the DiT
# (layers.0.self_attn.q_proj), dotted or with "_" for "." (lycoris_layers_0_self_attn_q_proj).
ADAPTER_KEY_PREFIXES = (
    "base_model.model.",  # PEFT (official trainer: PEFT on the DiT)
    "model.diffusion_model.",  # ComfyUI checkpoint naming
    "diffusion_model.",  # ComfyUI's own LoRA naming
    "transformer.",  # diffusers pipeline LoRAs (diffusers module names)
    "lycoris_",  # LyCORIS on the DiT
    "lora_unet_",  # kohya-style names as ComfyUI maps them
    "",
)

# The last part of an adapter key → the role of that tensor. PEFT keys may carry the adapter name "default".
ADAPTER_KEY_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_A.default.weight": "down",
    ".lora_B.default.weight": "up",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
    ".lora_magnitude_vector": "magnitude",  # PEFT DoRA: one norm per output channel
    ".lora_magnitude_vector.weight": "magnitude",
    ".dora_scale": "dora_scale",  # LyCORIS DoRA: [out, 1] (per output) or [1, in] (per input)
    ".lokr_w1": "w1",
    ".lokr_w1_a": "w1_a",
    ".lokr_w1_b": "w1_b",
    ".lokr_w2": "w2",
    ".lokr_w2_a": "w2_a",
    ".lokr_w2_b": "w2_b",
    ".lokr_t2": "t2",
}

# Adapter families recognised by a key part but not applied by the pack (named in the error message).
UNSUPPORTED_ADAPTER_KEYS = {
    ".hada_": "LoHa",
    ".oft_": "OFT",
    ".boft_": "BOFT",
    ".a1.weight": "GLoRA",
    ".lora_mid.weight": "Tucker LoCon (lora_mid)",
    ".diff": "full-weight difference",
    ".diff_b": "full-bias difference",
    ".lora_B.bias": "PEFT lora_bias",
    ".w_norm": "norm-layer difference",
    ".b_norm": "norm-layer difference",
    ".weight": "full replacement weight (PEFT modules_to_save?)",
}

# ---------------------------------------------------------------------------------------------------------------
# Low VRAM: weight formats, geometries for the memory planner, estimate margins
# ---------------------------------------------------------------------------------------------------------------

# ComfyUI's weight_dtype names (UNETLoader): default = as loaded; fp8_* = the DiT decoder's Linear weights stored in
# that float8 format with one float32 scale per output channel; _fast = the GPU's scaled fp8 matmul where it exists.
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
VRAM_BUDGET_MAX_GB = 1024.0  # a GPU memory budget above this is a typo (and inf would overflow the byte counts)
FP8_SCALE_SUFFIX = ".weight_scale"  # fp8 files: "<linear>.weight" float8 + "<linear>.weight_scale" float32 [out]

# The XL DiT's geometry (acestep-v15-xl-*: AceStepConfig overrides of the 2B defaults; its encoder side stays 2B-wide).
XL_DIT_GEOMETRY = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=32, num_attention_heads=32,
                       encoder_hidden_size=2048, encoder_intermediate_size=6144, encoder_num_attention_heads=16,
                       encoder_num_key_value_heads=8)

# Geometries the planner sizes on the meta device (transformers Qwen3 names; tied embeddings).
QWEN3_EMBEDDING_GEOMETRY = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
LM_GEOMETRIES = {
    "0.6B": dict(vocab_size=217204, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "1.7B": dict(vocab_size=217204, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "4B": dict(vocab_size=217204, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
}

WORKING_MARGIN = 1.25  # working-memory estimates are multiplied by this (allocator rounding, kernel workspaces)
MEMORY_OVERHEAD = 384 * 1024**2  # kept free in every phase (cuBLAS/cuDNN handles, fragmentation)
STREAM_SLOTS = 2  # layer buffers a streamed stack uses on the device: the running layer and the next one
VAE_TILE_CHOICES = (512, 384, 256, 128, 64)  # decode tile lengths (latent frames) tried from the largest that fits
VAE_ENCODE_WINDOW_CHOICES = (30.0, 20.0, 12.0, 8.0)  # encode windows (seconds) tried likewise

# ---------------------------------------------------------------------------------------------------------------
# 5 Hz LM planner (acestep-5Hz-lm-{0.6B,1.7B,4B}); strings byte-exact with upstream 6d467e4 (acestep/constants.py,
# acestep/llm_inference.py)
# ---------------------------------------------------------------------------------------------------------------

# Token ids of the Qwen3 vocabulary the LM extends; the audio codes follow it as added tokens.
LM_PAD_ID = ENDOFTEXT_ID  # <|endoftext|>: left padding of the CFG batch, and a stop token like <|im_end|>
LM_IM_START_ID = 151644
LM_EOS_ID = 151645  # <|im_end|>: end of the assistant turn
LM_THINK_ID = 151667  # <think>
LM_THINK_END_ID = 151668  # </think>
AUDIO_CODE_FIRST_ID = 151669  # <|audio_code_0|>; <|audio_code_N|> is AUDIO_CODE_FIRST_ID + N
AUDIO_CODE_TOKEN = "<|audio_code_{}|>"  # the LM samples only CODEBOOK_SIZE of them, CODES_PER_SECOND per second
LM_VOCAB_SIZE = 217204  # the published LMs: 151,669 Qwen3 ids + 65,535 <|audio_code_N|> tokens

# Qwen3 facts the Comfy-Org LM files (no config.json) do not carry; the same for all three LM sizes.
LM_ROPE_THETA = 1_000_000.0
LM_RMS_NORM_EPS = 1e-6
LM_MAX_POSITION_EMBEDDINGS = 40960

# Where the LM lives in the supported files, tried in this order; under the prefix are transformers'
# Qwen3ForCausalLM names ("model.layers.0...", optional "lm_head.weight": absent = tied to the embeddings).
LM_KEY_PREFIXES = (
    "text_encoders.qwen3_2b.transformer.",  # ComfyUI all-in-one checkpoint with the 1.7B LM
    "text_encoders.qwen3_4b.transformer.",  # ComfyUI all-in-one checkpoint with the 4B LM
    "",  # official acestep-5Hz-lm-* folder and Comfy-Org qwen_{1.7b,4b}_ace15.safetensors
)

# Instructions (system message "# Instruction\n{instruction}\n\n").
LM_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
LM_UNDERSTAND_INSTRUCTION = "Understand the given musical conditions and describe the audio semantics accordingly:"
LM_INSPIRED_INSTRUCTION = "Expand the user's input into a more detailed and specific musical description:"
LM_REWRITE_INSTRUCTION = "Format the user's input into a more detailed and specific musical description:"

# The Qwen3 chat template as the LM tokenizer renders a system + user conversation with add_generation_prompt=True.
LM_SYSTEM_CONTENT = "# Instruction\n{instruction}\n\n"
LM_CHAT_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
LM_GENERATION_PROMPT = "<|im_start|>assistant\n"

# User messages.
LM_USER_CAPTION_LYRICS = "# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"  # metas (CoT) and codes phases
LM_USER_FORMAT = "# Caption\n{caption}\n\n# Lyric\n{lyrics}"  # format/rewrite (no trailing newline)
LM_USER_INSPIRATION = "{query}\n\ninstrumental: {instrumental}"  # simple mode; "true"/"false"
LM_NO_USER_INPUT = "NO USER INPUT"  # unconditional user message and default negative prompt; empty query
LM_NO_LYRICS = "[Instrumental]"  # format: empty lyrics; simple mode: instrumental without lyrics

# Chain of thought: "<think>\n{yaml}\n</think>", YAML with sorted keys; the codes follow after "\n\n".
LM_COT_TEMPLATE = "<think>\n{yaml}\n</think>"
LM_EMPTY_COT = "<think>\n\n</think>"  # the unconditional branch's CoT (the 2026-04-22 CFG fix)
LM_COT_SEPARATOR = "\n\n"
LM_COT_KEYS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")  # what the codes CoT holds
# Fields of the metas state machine, in the order it writes them ("genres" only outside the plan's CoT phase).
LM_METAS_FIELDS = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
LM_CAPTION_MAX_TOKENS = 512  # caption (and genres) value length; a newline is forced at the limit
LM_FIELD_NAME_MAX_TOKENS = 16  # free-written field name after a caption; past it the next field is forced
LM_COT_MAX_NEW_TOKENS = 1536  # metas phase budget (the state machine ends well before)
LM_TEXT_MAX_NEW_TOKENS = 3500  # simple mode / understand / format (metas + lyrics): 600 s x 5 + 500, as upstream

# Sampling defaults (GenerationParams and the Gradio app); top-k 0 = off, top-p 1 = off, min-p 0 = off.
LM_CFG_SCALE = 2.0
LM_TEMPERATURE = 0.85
LM_TOP_P = 0.9
LM_TOP_K = 0
LM_MIN_P = 0.0
LM_UNDERSTAND_TOP_P = 1.0  # understanding runs without nucleus filtering (understand_music and the app)
# Weights one decode step reads, at 4 bytes each, below which the planner decodes on one CPU thread (a step of
# such an LM is a few hundred small ops: threads add a barrier to each). The test LMs read ~8 MB, the 0.6B ~2 GB.
LM_ONE_THREAD_MAX_BYTES = 64 * 2**20
LM_SKIPPED_TASKS = ("cover", "repaint", "extract")  # tasks upstream runs without the LM

# ---------------------------------------------------------------------------------------------------------------
# The LM in a request (request.PlanSettings), its files and the pipeline's plan step
# ---------------------------------------------------------------------------------------------------------------

# off: no LM; codes: the user's metas as given, the LM writes the audio codes (ComfyUI's native path); think: the LM
# first writes the metas the user left out and a caption (upstream's "thinking", the app's default), then the codes.
LM_MODES = ("off", "codes", "think")
# What the LM may decide when the user left it out (upstream use_cot_metas / use_cot_language). The language is
# written into the LM's own chain of thought only: as upstream, the DiT keeps the user's language.
LM_DECIDE_FIELDS = ("bpm", "keyscale", "timesignature", "duration", "language")
# Limits of the sampling settings (the official app's sliders).
LM_CFG_SCALE_MIN, LM_CFG_SCALE_MAX = 1.0, 3.0  # 1 = no CFG
LM_TEMPERATURE_MAX = 2.0  # 0 = greedy
LM_TOP_K_MAX = 100  # 0 = off
# Where the LM is found next to the DiT when none is named: the official folder beside acestep-v15-* (the app's
# default LM first), the Comfy-Org files in models/text_encoders/, or the LM inside an all-in-one file.
LM_FOLDER_PREFIX = "acestep-5Hz-lm-"
LM_FOLDER_ORDER = ("acestep-5Hz-lm-1.7B", "acestep-5Hz-lm-4B", "acestep-5Hz-lm-0.6B")
LM_COMFY_FILES = ("qwen_1.7b_ace15.safetensors", "qwen_4b_ace15.safetensors")

# ---------------------------------------------------------------------------------------------------------------
# Lyric timestamps (timestamps.py), as the official app computes them (lyric_timestamp.py / dit_alignment.py)
# ---------------------------------------------------------------------------------------------------------------

# DiT cross-attention heads that follow the sung lyrics, {layer: heads}: the 2B default; a config.json may name its
# own (lyric_alignment_layers_config, the XL configs do).
LYRIC_ALIGNMENT_HEADS = {2: (6,), 3: (10, 11), 4: (3,), 5: (8, 9), 6: (8,)}
LYRIC_ALIGNMENT_SEED = 42  # the noise of the extra DiT pass (the app's fixed seed)
LYRIC_ALIGNMENT_SUPPRESSION = 2.0  # how many row/column medians are taken off the attention ("violence_level")
