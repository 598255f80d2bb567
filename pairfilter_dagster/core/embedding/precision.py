"""The two precisions, and the dtype each runs the image tower in.

`exact` (the default): float32 and full-size decoding; scores equal Data-Juicer's within 1e-5.
`fast`: bfloat16 on CPUs whose hardware computes it (AMX, AVX-512 BF16; elsewhere bfloat16 is emulated and slower
than float32, so the model stays in float32 and the log says why), float16 on CUDA, and reduced-size decoding
(`preprocess.reduction_edge`). docs/performance.md has the measured speed and score deviation of each.

Nothing here imports torch at module level: the resource validates these settings when Dagster loads the
definitions."""

from pathlib import Path

PRECISIONS = ("exact", "fast")
HALF_DTYPES = ("float16", "bfloat16")
CUDA_FAST_DTYPE = "float16"
"""float16 rather than bfloat16 on CUDA: both run on the tensor cores, and float16 keeps three more mantissa bits."""
BF16_CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")
"""/proc/cpuinfo flags of CPUs that compute bfloat16 matrix products in hardware (oneDNN uses them through torch)."""


def check_precision(precision: str, dtype: str | None) -> None:
    """Refuse a precision that does not exist, and an explicit half dtype with `precision: exact` (one message naming
    both fields). Needs no torch, so it runs when the resource is configured, before any work."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "exact" and dtype in HALF_DTYPES:
        raise ValueError(f"precision: exact runs the model in float32, but dtype is {dtype}: set precision: fast to run "
                         f"in {dtype} (approximate scores), or leave dtype unset")


def cpu_bf16_feature() -> str | None:
    """The CPU feature that makes bfloat16 fast here (`amx_bf16`, `amx_tile` or `avx512_bf16`), or None: from
    /proc/cpuinfo's flags, else torch's own checks (other systems)."""
    try:
        flags = set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("flags")), []))
    except OSError:
        flags = set()
    if not flags:
        import torch

        checks = {"amx_tile": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
        flags = {flag for flag, check in checks.items() if getattr(torch.cpu, check, lambda: False)()}
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def run_dtype(precision: str, dtype: str | None, device: str) -> tuple[str, str]:
    """The dtype the tower runs in on `device` ('cpu' or 'cuda'), and why, for the log. An explicit `dtype` is
    taken as given (float16 needs cuda); None lets the precision choose."""
    check_precision(precision, dtype)
    if dtype == "float16" and device != "cuda":
        raise ValueError(f"dtype: float16 needs device cuda; on {device} leave dtype unset (precision: fast then runs "
                         "bfloat16 where the CPU computes it in hardware)")
    if dtype is not None:
        return dtype, f"dtype {dtype} as configured"
    if precision == "exact":
        return "float32", "precision exact"
    if device == "cuda":
        return CUDA_FAST_DTYPE, f"precision fast: {CUDA_FAST_DTYPE} on cuda"
    feature = cpu_bf16_feature()
    if feature:
        return "bfloat16", f"precision fast: bfloat16 (the CPU has {feature})"
    return "float32", ("precision fast: this CPU has neither AMX nor AVX-512 BF16, where bfloat16 would run slower than "
                       "float32; the model stays in float32 (decoding is still reduced)")
